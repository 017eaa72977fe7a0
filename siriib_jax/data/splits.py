"""Index arithmetic shared by the loader: stratified subsets and per-epoch orders.

Everything here is a pure function of its arguments, so any host, and any resumed
run, computes the same indices.
"""

import numpy as np


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """A random subset of `size` examples with the class proportions of `labels`.

  Each class gets `size * count / len(labels)` examples rounded by largest
  remainder, drawn uniformly without replacement. Use it instead of `[:size]`:
  test splits are often sorted by class.

  Args:
    labels: int [N].
    size: 0 <= size <= N.
    seed: fixes the draw.

  Returns:
    Sorted int64 [size] indices into `labels`.
  """
  if not 0 <= size <= len(labels):
    raise ValueError(f"Cannot draw {size} of {len(labels)} examples.")
  classes, counts = np.unique(labels, return_counts=True)
  exact = size * counts / len(labels)
  quota = np.floor(exact).astype(np.int64)
  largest_remainders = np.argsort(quota - exact, kind="stable")[:size - quota.sum()]
  quota[largest_remainders] += 1
  rng = np.random.default_rng(seed)
  chosen = [rng.choice(np.flatnonzero(labels == c), q, replace=False)
            for c, q in zip(classes, quota)]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def epoch_permutation(seed: int, stream: int, epoch: int, size: int) -> np.ndarray:
  """The order in which `epoch` visits the `size` examples of data `stream`.

  Args:
    seed: the run's data seed (non-negative).
    stream: 0 for the training set, 1 for extra data mixed in by fraction.
    epoch: epoch number of that stream.
    size: number of examples of the stream.

  Returns:
    int64 [size], a permutation of range(size).
  """
  return np.random.default_rng((seed, stream, epoch)).permutation(size)
