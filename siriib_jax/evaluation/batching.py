"""Running attacks over a set of test points (host loop).

`predict` runs in fixed-size batches: the last batch is padded, by repeating its first
point, to the batch size (or to N when there are fewer points), and the padding is dropped.
`run_attack` runs an attack only on the points still robust — correctly classified and not
yet broken — through AutoAttack's machinery (`attacks.autoattack.attack_points`: chunks of
at most the batch size padded to a few sizes, targeted attacks target by target, Square's
queries in segments each on the points still in the loop), every point attacked alone with
its own key, so that the result is, point by point, that of attacking every point.

Several hosts (`jax.process_count() > 1`): each evaluates its share of the points
(`select_share`, `share_index`: the layout of `InputPipeline.eval_batches`), every point
keyed by its global index (its position among all the evaluated points), and the per-point
results are gathered into the global order (`gather_points`, through
`jax.experimental.multihost_utils.process_allgather`), so that they do not depend on the
number of hosts. `Hosts` names the processes; tests simulate several with their own
`allgather`.
"""

import functools
import time
import zlib
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from siriib_jax import parallel

from siriib_jax.attacks.autoattack import (COMPACT_EVERY, AutoAttack, ComponentResult, Progress,
                                          attack_points)
from siriib_jax.data import InputPipeline


def select_points(data: InputPipeline, subset_size: int = 0, seed: int = 0,
                split: str = "test") -> tuple[np.ndarray, np.ndarray]:
  """This host's points of `split`: all of them, or a random stratified subset.

  Args:
    data: the input pipeline.
    subset_size: 0 for every point, else the size of a stratified subset
      (`data.stratified_subset`: class proportions kept, drawn uniformly).
    seed: fixes the subset.
    split: 'test' or 'validation'.

  Returns:
    images: uint8 (N, H, W, C); labels: int32 (N,).
  """
  batches = data.eval_batches(split, subset_size=subset_size or None, subset_seed=seed)
  images, labels = [], []
  for batch in batches:
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  return np.concatenate(images), np.concatenate(labels)


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


def batches(n: int, batch_size: int, multiple: int = 1) -> Iterator[tuple[int, np.ndarray]]:
  """`(i, indices)` of batch i: `min(batch_size, n)` indices into n points (rounded up to a
  multiple of `multiple`, the devices a batch is sharded over), the last batch padded by
  repeating its first index. Slice results with `[:min(batch_size, n - i * batch_size)]`."""
  batch_size = min(batch_size, n)
  padded = -(-batch_size // multiple) * multiple
  for i, start in enumerate(range(0, n, batch_size)):
    index = np.arange(start, min(start + batch_size, n))
    yield i, np.concatenate([index, np.full(padded - len(index), start)])


def evaluation_mesh(mesh: Optional[Mesh] = None) -> Mesh:
  """The mesh an evaluation shards its points over: training's data mesh
  (`parallel.data_mesh`) over this host's devices, as each host evaluates its own points
  (`select_share` returns this host's share). Given a `mesh` (e.g. training's, over every
  host's devices): its devices on this host (`parallel.local_mesh`; `mesh` itself on one
  host)."""
  if mesh is not None:
    return parallel.local_mesh(mesh)
  return parallel.data_mesh(jax.local_devices())


def attack_key(seed: int, name: str) -> jax.Array:
  """The PRNG key of the attack `name`: fixed by the seed and the name only, so adding an
  attack to the list does not change the others' results."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))


def map_batches(fn: Callable[..., Any], inputs: Sequence[np.ndarray], batch_size: int,
                mesh: Optional[Mesh] = None) -> Any:
  """`fn` over N points in fixed-size batches, the results stitched back together.

  Every batch has the same shape (the last one padded by repeating its first point, as
  `batches` lays out; the padding's outputs are dropped), so a jitted `fn` compiles once.
  This is the one batch loop of the package's per-point computations (predictions, x_avg,
  features, singular-value swaps).

  Args:
    fn: `fn(*batch) -> pytree of arrays`, each with the batch as its leading axis; e.g.
      a jitted function of `len(inputs)` arrays.
    inputs: arrays with a common leading axis N (NumPy, host memory).
    batch_size: points per call, at most N (rounded up to a multiple of `mesh.size`).
    mesh: shard each batch over this mesh's `data` axis (`parallel.batch_sharded`).

  Returns:
    The pytree `fn` returns, as NumPy arrays with leading axis N (shapes read with
    `jax.eval_shape`, nothing run, when N = 0).
  Raises:
    ValueError: the inputs' leading axes differ, or `batch_size` < 1.
  """
  inputs = [np.asarray(a) for a in inputs]
  n = len(inputs[0])
  if any(len(a) != n for a in inputs) or batch_size < 1:
    raise ValueError(f"map_batches needs inputs with one leading axis and batch_size ≥ 1, "
                     f"got leading axes {[len(a) for a in inputs]} and batch_size "
                     f"{batch_size}.")
  if n == 0:
    shapes = jax.eval_shape(fn, *[jax.ShapeDtypeStruct((1,) + a.shape[1:], a.dtype)
                                  for a in inputs])
    return jax.tree_util.tree_map(lambda s: np.empty((0,) + s.shape[1:], s.dtype), shapes)
  multiple = mesh.size if mesh is not None else 1
  out = None
  for i, index in batches(n, batch_size, multiple):
    batch = [a[index] for a in inputs]
    if mesh is not None:
      batch = jax.device_put(batch, parallel.batch_sharded(mesh))
    real = index[:min(batch_size, n - i * batch_size)]
    result = jax.tree_util.tree_map(lambda r: np.asarray(r)[:len(real)], fn(*batch))
    if out is None:
      out = jax.tree_util.tree_map(lambda r: np.empty((n,) + r.shape[1:], r.dtype), result)
    jax.tree_util.tree_map(lambda o, r: o.__setitem__(real, r), out, result)
  return out


@jax.jit
def _predict(fn, x):
  return jnp.argmax(fn(x), axis=-1)


def predict(logits_fn, images: np.ndarray, batch_size: int,
            mesh: Optional[Mesh] = None) -> np.ndarray:
  """(N,) predicted classes of `images` (N, H, W, C) float in [0, 1], in batches of
  `batch_size` (`map_batches`; sharded over `mesh`'s `data` axis when given)."""
  return map_batches(functools.partial(_predict, logits_fn), (images,), batch_size, mesh)


class Outcome(NamedTuple):
  """One attack on N points: x_adv (N, H, W, C) float32 (x where the point was not
  attacked: a clean error, or for AutoAttack a point no component broke); success (N,)
  bool, misclassified at x_adv (clean errors included); components: AutoAttack's name ->
  `ComponentResult` (None for other attacks); seconds: wall time, compilation included."""
  x_adv: np.ndarray
  success: np.ndarray
  components: Optional[dict[str, ComponentResult]]
  seconds: float


def run_attack(attack, fn, images: np.ndarray, labels: np.ndarray, key: jax.Array,
               batch_size: int, clean_correct: Optional[np.ndarray] = None, *,
               index: Optional[np.ndarray] = None, only_robust: bool = True,
               compact_every: int = COMPACT_EVERY, mesh=None,
               progress: Optional[Callable[[str, Progress], None]] = None) -> Outcome:
  """Runs `attack(fn, x, y, key)` on `images` (N, H, W, C) float in [0, 1], `labels` (N,).

  Only the points of `clean_correct` (default: computed with `predict`) are attacked, and
  each target of a targeted attack, and each segment of Square's queries, only on the
  points not yet broken; point j draws from `fold_in(key, index[j])` (for AutoAttack, from
  its component's and target's key folded likewise: `attacks/autoattack.py`). Each point being
  attacked alone, `only_robust=False` — every point attacked by every target, query and
  component — gives the same success flags, and the same x_adv on the broken points.

  Args:
    attack: a jittable `Attack`, `TargetedAttack` or `QueryAttack` (or
      `adaptive.adaptive_pgd`), or an `AutoAttack`.
    fn: what it attacks (a `jax.tree_util.Partial`, so that it is a jit argument).
    batch_size: the largest chunk of points an attack sees at once.
    clean_correct: (N,) bool, the points the model classifies correctly.
    index: (N,) int, the points' global indices, which fix their keys (default 0 … N − 1;
      with several hosts, `Share.index`: a point's result then does not depend on the
      host count).
    only_robust: False to attack every point (for checking the default).
    compact_every: Square alone gathers the points still to attack every this many
      queries (AutoAttack's Square: the ensemble's own `compact_every`).
    mesh: shard each chunk over this mesh's `data` axis (`parallel.data_mesh`).
    progress: called with (AutoAttack's component name or '', `Progress`) during the run.
  """
  started = time.time()
  x = np.asarray(images, np.float32)
  y = np.asarray(labels)
  if isinstance(attack, AutoAttack):
    result = attack(fn, x, y, key, index=index, only_robust=only_robust, mesh=mesh,
                    progress=progress)
    return Outcome(result.x_adv, result.success, result.components, time.time() - started)
  if clean_correct is None:
    clean_correct = predict(fn, x, batch_size, mesh) == y
  success, x_adv = ~clean_correct, x.copy()
  todo = clean_correct if only_robust else np.ones(len(x), bool)
  report = None if progress is None else (lambda p: progress("", p))
  attack_points(attack, fn, x, y, key, todo, success, x_adv, index=index, bucket=batch_size,
                broken_only=False, only_robust=only_robust, compact_every=compact_every,
                mesh=mesh, progress=report)
  return Outcome(x_adv, success, None, time.time() - started)
