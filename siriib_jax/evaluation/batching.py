"""Running attacks over a set of test points in fixed-size batches (host loop).

Every jittable attack compiles once: the last batch is padded, by repeating its first
point, to the batch size (or to N when there are fewer points, so that a small subset does
not pay for a large batch), and the padding is dropped from the results. `AutoAttack`
(host-side) gets the real points only and buckets them itself.
"""

import time
import zlib
from typing import Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from siriib_jax.attacks.autoattack import AutoAttack, ComponentResult
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


def batches(n: int, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
  """`(i, indices)` of batch i: `min(batch_size, n)` indices into n points, the last batch
  padded by repeating its first index. Slice results with
  `[:min(batch_size, n - i * batch_size)]`."""
  batch_size = min(batch_size, n)
  for i, start in enumerate(range(0, n, batch_size)):
    index = np.arange(start, min(start + batch_size, n))
    yield i, np.concatenate([index, np.full(batch_size - len(index), start)])


def attack_key(seed: int, name: str) -> jax.Array:
  """The PRNG key of the attack `name`: fixed by the seed and the name only, so adding an
  attack to the list does not change the others' results."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))


@jax.jit
def _predict(fn, x):
  return jnp.argmax(fn(x), axis=-1)


def predict(logits_fn, images: np.ndarray, batch_size: int) -> np.ndarray:
  """(N,) predicted classes of `images` (N, H, W, C) float in [0, 1]."""
  out = np.empty(len(images), np.int64)
  for _, index in batches(len(images), batch_size):
    out[index] = np.asarray(_predict(logits_fn, images[index]))
  return out


class Outcome(NamedTuple):
  """One attack on N points: x_adv (N, H, W, C) float32; success (N,) bool,
  misclassified at x_adv; components: AutoAttack's name -> `ComponentResult` (None for
  other attacks); seconds: wall time, compilation included."""
  x_adv: np.ndarray
  success: np.ndarray
  components: Optional[dict[str, ComponentResult]]
  seconds: float


def run_attack(attack, fn, images: np.ndarray, labels: np.ndarray, key: jax.Array,
               batch_size: int) -> Outcome:
  """Runs `attack(fn, x, y, key)` over `images` (N, H, W, C) float in [0, 1], `labels`
  (N,), batch by batch (batch i with `fold_in(key, i)`).

  `attack` is a jittable `Attack` (or `adaptive.adaptive_pgd`), or an `AutoAttack`; `fn` is
  what it attacks (a `jax.tree_util.Partial`, so that it is a jit argument).
  """
  started = time.time()
  host_side = isinstance(attack, AutoAttack)
  run = attack if host_side else jax.jit(attack)  # Cached by `attack`: a rerun reuses it.
  x_adv, success = images.astype(np.float32), np.zeros(len(images), bool)
  parts: dict[str, list] = {}
  for i, index in batches(len(images), batch_size):
    index = index[:min(batch_size, len(images) - i * batch_size)] if host_side else index
    result = run(fn, images[index], labels[index], jax.random.fold_in(key, i))
    real = slice(0, min(batch_size, len(images) - i * batch_size))
    x_adv[index[real]] = np.asarray(result.x_adv)[real]
    success[index[real]] = np.asarray(result.success)[real]
    if host_side:
      for name, component in result.components.items():
        parts.setdefault(name, []).append(component)
  components = {name: ComponentResult(np.concatenate([c.attacked for c in chunks]),
                                      np.concatenate([c.success for c in chunks]),
                                      sum(c.seconds for c in chunks))
                for name, chunks in parts.items()} if host_side else None
  return Outcome(x_adv, success, components, time.time() - started)
