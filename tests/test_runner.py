"""The host-side runner (`attacks/runner.py`): chunk sizes and padding, and a compiled size
reused where padding is cheaper than compiling."""

import jax
import numpy as np
import pytest

from siriib_jax import attacks
from siriib_jax.attacks import runner
from siriib_jax.attacks.runner import bucket_size
from siriib_jax.attacks.sizes import CostBook
from tests.helpers import linear_attack_problem


@pytest.mark.parametrize("bucket", [1, 7, 8, 64, 256, 500])
def test_chunks_pad_little_to_few_sizes(bucket):
  sizes = [bucket_size(n, bucket) for n in range(1, bucket + 1)]
  assert all(n <= size <= bucket and 8 * (size - n) < n  # Less than 1/8 of padding.
             for n, size in zip(range(1, bucket + 1), sizes))
  for octave in range(1, bucket.bit_length() + 1):  # Sizes in [2^(octave-1), 2^octave).
    assert len({s for s in sizes if s != bucket and s.bit_length() == octave}) <= 8


def test_a_partial_chunk_runs_at_a_compiled_size_when_padding_is_cheaper(monkeypatch,
                                                                         compile_events):
  """After a call on 16 points has compiled APGD's programs at 16, a call on 13 of them
  (ladder size 13) runs padded to 16 — on a linear model padding costs microseconds, a
  compilation far more — compiling nothing, with the flags and x_adv of its own points."""
  monkeypatch.setattr(runner, "_COSTS", CostBook())
  fn, x, y, eps, _ = linear_attack_problem(n=16, wrong=0)
  attack = attacks.apgd(eps, steps=7)

  def run(todo):
    success, x_adv = np.zeros(len(x), bool), x.copy()
    runner.attack_points(attack, fn, x, y, jax.random.key(3), todo, success, x_adv,
                         bucket=16)
    return success, x_adv

  every = run(np.ones(len(x), bool))
  compile_events.clear()
  todo = np.arange(len(x)) < 13
  some = run(todo)
  assert "/jax/core/compile/backend_compile_duration" not in compile_events
  np.testing.assert_array_equal(some[0][todo], every[0][todo])
  np.testing.assert_allclose(some[1][todo], every[1][todo], rtol=0, atol=1e-6)


def test_a_segments_padding_is_weighed_by_the_iterations_still_to_come(monkeypatch):
  """APGD's segments (`apgd.segment_starts`) each decide a partial chunk's size by the work
  per point still to come — the run's iterations from the segment on, and every later
  run's (restarts, targets) — not by the segment's own few iterations: a chunk decided in
  a 5-iteration segment would otherwise run its 59-iteration segment padded alike."""
  asked = []
  book = CostBook()
  original = book.size_for
  monkeypatch.setattr(book, "size_for", lambda key, n, size, units, limit, multiple=1: (
      asked.append((n, units)) or original(key, n, size, units, limit, multiple)))
  monkeypatch.setattr(runner, "_COSTS", book)
  fn, x, y, eps, _ = linear_attack_problem(n=16, wrong=0)
  attack = attacks.apgd(eps, steps=100, restarts=2)
  success, x_adv = np.zeros(len(x), bool), x.copy()
  runner.attack_points(attack, fn, x, y, jax.random.key(3), np.ones(len(x), bool), success,
                       x_adv, bucket=16, only_robust=False)
  # One segment per run (`only_robust=False`), from iteration −1; then `finish` (one pass,
  # the runs still to come).
  assert asked == [(16, 101 + 100), (16, 2), (16, 101), (16, 1)]
