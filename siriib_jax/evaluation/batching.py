"""Running attacks over a set of test points (host loop).

`predict` runs in fixed-size batches: the last batch is padded, by repeating its first
point, to the batch size (or to N when there are fewer points), and the padding is dropped.
`run_attack` runs an attack only on the points still robust — correctly classified and not
yet broken — through AutoAttack's machinery (`attacks.runner.attack_points`: chunks of
at most the batch size padded to a few sizes, targeted attacks target by target, Square's
queries in segments each on the points still in the loop), every point attacked alone with
its own key, so that the result is, point by point, that of attacking every point.

With several hosts each evaluates its share of the points (`evaluation/hosts.py`), every
point keyed by its global index.
"""

import functools
import time
import zlib
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from siriib_jax import parallel

from siriib_jax.attacks.autoattack import AutoAttack, ComponentResult
from siriib_jax.attacks.gradients import nonfinite_gradient
from siriib_jax.attacks.objectives import cross_entropy
from siriib_jax.attacks.runner import COMPACT_EVERY, Progress, attack_points
from siriib_jax.attacks.threat_model import check_images
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


# `predict`'s class for an image whose logits are not all finite.
NO_PREDICTION = -1


@jax.jit
def _predict(fn, x):
  logits = fn(x)
  finite = jnp.all(jnp.isfinite(logits), axis=-1)
  return jnp.where(finite, jnp.argmax(logits, axis=-1), NO_PREDICTION)


def predict(logits_fn, images: np.ndarray, batch_size: int,
            mesh: Optional[Mesh] = None) -> np.ndarray:
  """(N,) predicted classes of `images` (N, H, W, C) float in [0, 1], in batches of
  `batch_size` (`map_batches`; sharded over `mesh`'s `data` axis when given).
  `NO_PREDICTION` (−1, equal to no label) where a logit of the image is NaN or ±inf: such
  a point is neither correctly classified nor an adversarial example."""
  return map_batches(functools.partial(_predict, logits_fn), (images,), batch_size, mesh)


@jax.jit
def _clean_pass(fn, x, y):
  def loss(v):
    logits = fn(v).astype(jnp.float32)
    return jnp.sum(cross_entropy(logits, y)), logits
  grad, logits = jax.grad(loss, has_aux=True)(x)
  finite = jnp.all(jnp.isfinite(logits), axis=-1)
  return jnp.where(finite, jnp.argmax(logits, axis=-1), NO_PREDICTION), nonfinite_gradient(grad)


def clean_pass(logits_fn, images: np.ndarray, labels: np.ndarray, batch_size: int,
               mesh: Optional[Mesh] = None) -> tuple[np.ndarray, np.ndarray]:
  """What an evaluation reads at the clean points, from one forward and backward pass per
  batch (`map_batches`): (N,) predicted classes (`predict`'s, `NO_PREDICTION` where a
  logit is not finite) and (N,) bool, the cross-entropy's input gradient at x has a NaN or
  ±inf entry (`gradients.nonfinite_gradient`; the report's
  `meta.nonfinite_gradient_points`). `images` (N, H, W, C) float in [0, 1]; `labels` (N,)
  int."""
  return map_batches(functools.partial(_clean_pass, logits_fn), (images, labels),
                     batch_size, mesh)


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
  x = check_images(images, "images")
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
