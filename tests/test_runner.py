"""The host-side runner (`attacks/runner.py`): chunk sizes and padding."""

import pytest

from siriib_jax.attacks.runner import bucket_size


@pytest.mark.parametrize("bucket", [1, 7, 8, 64, 256, 500])
def test_chunks_pad_little_to_few_sizes(bucket):
  sizes = [bucket_size(n, bucket) for n in range(1, bucket + 1)]
  assert all(n <= size <= bucket and 8 * (size - n) < n  # Less than 1/8 of padding.
             for n, size in zip(range(1, bucket + 1), sizes))
  for octave in range(1, bucket.bit_length() + 1):  # Sizes in [2^(octave-1), 2^octave).
    assert len({s for s in sizes if s != bucket and s.bit_length() == octave}) <= 8
