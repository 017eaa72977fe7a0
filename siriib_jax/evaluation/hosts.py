"""An evaluation over several hosts (`jax.process_count() > 1`): each evaluates its share of
the points (`select_share`, `share_index`: the layout of `InputPipeline.eval_batches`),
every point keyed by its global index (its position among all the evaluated points), and
the per-point results are gathered into the global order (`gather_points`, through
`jax.experimental.multihost_utils.process_allgather`), so that they do not depend on the
number of hosts. `Hosts` names the processes; tests simulate several with their own
`allgather`. On one host every function is the identity or a no-op.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from siriib_jax.data import InputPipeline
from siriib_jax.evaluation.batching import select_points


class Hosts(NamedTuple):
  """The processes an evaluation is spread over.

  Attributes:
    index: this process, in [0, count).
    count: the number of processes.
    allgather: a pytree of host-local NumPy arrays, of the same shapes and dtypes on
      every process, → the same pytree with a new leading axis of size `count` (process p's
      array at [p]), identical on every process; a collective, so every process calls it
      the same number of times in the same order.
  """
  index: int
  count: int
  allgather: Callable[[Any], Any]


def current_hosts() -> Hosts:
  """This run's processes: `jax.process_index()`, `jax.process_count()` and
  `multihost_utils.process_allgather` (over gloo on CPU, NCCL / ICI on accelerators)."""
  return Hosts(jax.process_index(), jax.process_count(), multihost_utils.process_allgather)


def share_index(total: int, batch_size: int, process_index: int,
                process_count: int) -> np.ndarray:
  """The global indices of host `process_index`'s points among `total`, in its order.

  The layout of `InputPipeline.eval_batches`: global batch j covers points
  [j·B, (j+1)·B) and host p takes its p-th block of B / process_count.

  Args:
    total: N, the points evaluated over all hosts.
    batch_size: the global batch B, a multiple of `process_count`.
    process_index, process_count: the host, and the number of hosts.

  Returns:
    (N_p,) int64, increasing; the hosts' shares partition [0, N).
  Raises:
    ValueError: `batch_size` is not a positive multiple of `process_count`.
  """
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"The batch size {batch_size} is not a positive multiple of "
                     f"{process_count} hosts.")
  host = batch_size // process_count
  starts = np.arange(0, total, batch_size, dtype=np.int64)
  positions = (starts[:, None] + process_index * host + np.arange(host)).ravel()
  return positions[positions < total]


class Share(NamedTuple):
  """One host's share of an evaluation's points: images (N_p, H, W, C); labels (N_p,);
  index (N_p,) int64, each point's global index in [0, total); total: N over all hosts."""
  images: np.ndarray
  labels: np.ndarray
  index: np.ndarray
  total: int


def select_share(data: InputPipeline, subset_size: int = 0, seed: int = 0,
                 split: str = "test") -> Share:
  """`select_points` (this host's points, uint8 images) with their global indices: the
  positions among all the points selected, which on one host are 0 … N − 1 in order."""
  images, labels = select_points(data, subset_size, seed, split)
  total = subset_size if subset_size else len(data.eval_data(split))
  index = share_index(total, data.global_batch_size, data.process_index, data.process_count)
  if len(index) != len(labels):
    raise AssertionError(f"{len(labels)} points on host {data.process_index}, where the "
                         f"layout of eval_batches gives {len(index)}.")
  return Share(images, labels, index, int(total))


def assemble(shares: Sequence[tuple[np.ndarray, Any]], total: int) -> Any:
  """The hosts' per-point arrays in the global order.

  Args:
    shares: per host, `(index (N_p,), pytree of arrays with leading axis N_p)`, the same
      pytree structure, trailing shapes and dtypes on every host.
    total: N.

  Returns:
    The pytree with leading axis N, point `index[k]` of a host from its row k.
  Raises:
    ValueError: the indices do not cover [0, N) exactly once.
  """
  index = np.concatenate([np.asarray(i, np.int64) for i, _ in shares])
  if len(index) != total or not np.array_equal(np.sort(index), np.arange(total)):
    raise ValueError(f"The hosts' {len(index)} points do not cover the {total} points "
                     "exactly once.")
  trees = [tree for _, tree in shares]
  return jax.tree_util.tree_map(
      lambda *leaves: _place(index, np.concatenate([np.asarray(a) for a in leaves])), *trees)


def _place(index: np.ndarray, values: np.ndarray) -> np.ndarray:
  out = np.empty_like(values)
  out[index] = values
  return out


# What `allgather` carries: gloo and x64-less JAX take neither bool nor 64-bit arrays.
_WIRE = {np.dtype(bool): np.uint8, np.dtype(np.int64): np.int32,
         np.dtype(np.float64): np.float32}


def gather_points(tree: Any, index: np.ndarray, total: int,
                  hosts: Optional[Hosts] = None) -> Any:
  """Every host's per-point arrays, gathered into the global order (the same on all).

  One host whose index is 0 … N − 1 gets `tree` itself back (no copy, no collective).
  Otherwise a collective (`hosts.allgather`; every host calls it): the shares are padded
  to the longest, gathered, and put in place (`assemble`). Bool and 64-bit arrays travel
  as uint8 / 32-bit (int64 values must fit in int32) and come back in their dtype.

  Args:
    tree: a pytree of NumPy arrays, leading axis N_p (this host's points).
    index: (N_p,) their global indices in [0, total).
    total: N, the points over all hosts.
    hosts: default `current_hosts()`.

  Returns:
    The pytree with leading axis N.
  Raises:
    ValueError: the hosts' indices do not cover [0, N) exactly once.
  """
  hosts = current_hosts() if hosts is None else hosts
  index = np.asarray(index)
  if hosts.count == 1 and len(index) == total and np.array_equal(index, np.arange(total)):
    return tree
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  leaves = [np.asarray(a) for a in leaves]
  counts = np.asarray(hosts.allgather(np.asarray(len(index), np.int32))).reshape(-1)
  width = int(counts.max())

  def wire(a):
    a = np.concatenate([a, np.zeros((width - len(a),) + a.shape[1:], a.dtype)])
    return a.astype(_WIRE.get(a.dtype, a.dtype))

  gathered_index, gathered = hosts.allgather(
      (wire(index.astype(np.int64)), [wire(a) for a in leaves]))
  gathered_index = np.asarray(gathered_index)
  shares = [(gathered_index[p, :n], [np.asarray(g)[p, :n].astype(a.dtype)
                                     for g, a in zip(gathered, leaves)])
            for p, n in enumerate(counts)]
  return jax.tree_util.tree_unflatten(treedef, assemble(shares, total))


def gather_max(value: float, hosts: Optional[Hosts] = None) -> float:
  """The largest of the hosts' `value`s (e.g. wall times: the slowest host's); one host:
  `value` itself. A collective with several hosts."""
  hosts = current_hosts() if hosts is None else hosts
  if hosts.count == 1:
    return value
  return float(np.max(np.asarray(hosts.allgather(np.asarray(value, np.float32)))))
