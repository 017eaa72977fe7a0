"""SiRIIB's purified image `x_avg` for the paper's pictures (Fig. 4, 9, 10, 11): the arrays
of each figure's rows; `plotting.image_grid` draws them.

`x_avg` is the sigmoid-averaged multi-scale SR output (paper §4.2), `ModelOutput.x_avg` of
`model.apply(variables, x, train=False)`; for a model whose SR modules are a detached
purifier (App. C.5), the purifier's x_avg (`ModelOutput.purified`) where the output has one.
A model without SR modules has none: `x_avg` raises `NoSiRIIBError`.

Differences for viewing (App. C.5: "we normalize both x − x_adv and x_avg − x_adv to
obtain the best views"): the paper does not say how. Here each difference image is mapped
to [0, 1] on its own, over all its pixels and channels together:
`(d − min d) / (max d − min d)`. One scale for the three channels keeps the colour of the
difference (which channel moved more); one scale per image, not per row, makes even a
small difference visible, so the brightness of two pictures does not compare their
magnitudes. A constant difference (range below `FLAT_RANGE`, float rounding) maps to
mid-grey 0.5. The order of each difference follows its caption: `x − x_adv` and
`x_avg − x_adv` in Fig. 9, `x_adv − x_avg` in Fig. 10 (min-max of −d is 1 − that of d:
the negative picture).

The figures' rows (a row holds one picture per test image, the same images in every row):

* Fig. 9 (`adversarial_rows`): x, x_adv, x_avg(x_adv), x − x_adv, x_avg − x_adv;
* Fig. 10 (`attack_comparison_rows`): x, then for each attack (PGD-20, C&W-100) x_adv,
  x_avg(x_adv), x_adv − x_avg;
* Fig. 11 (`x_avg_rows` with `adaptive_examples`): x, then x_avg(x_adv) for each adaptive
  attack of Table 4;
* Fig. 4 (`x_avg_rows`): x, then x_avg(x) of each run (e.g. λ1 = 1, 1.5, 3, 5, 20).
"""

import functools
from typing import Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from siriib_jax.attacks.threat_model import check_images
from siriib_jax.evaluation import adaptive
from siriib_jax.evaluation.batching import map_batches
from siriib_jax.models.model_fn import outputs_fn


# A difference whose range over an image is below this (pixel units; 1/255 ≈ 4e-3) is
# rounding noise around a constant: shown as 0.5 grey, not stretched to [0, 1].
FLAT_RANGE = 1e-6


class Row(NamedTuple):
  """One row of a picture grid.

  Attributes:
    label: what the row shows, drawn at its left (e.g. 'x_avg (PGD-20)').
    images: (N, H, W, 3) float32 in [0, 1] (or (N, H, W) for a heatmap row).
  """
  label: str
  images: np.ndarray


class NoSiRIIBError(ValueError):
  """The model has no SiRIIB branch, so no x_avg."""


@functools.partial(jax.jit, static_argnums=0)
def _x_avg(model, variables, x):
  output = model.apply(variables, x, train=False)
  x_avg = getattr(output, "x_avg", None)
  if x_avg is None:  # A detached SR purifier's x_avg (App. C.5), where the model has one.
    x_avg = getattr(output, "purified", None)
  if x_avg is None:
    raise NoSiRIIBError("this model has no SiRIIB branch (model.siriib.enabled is False), "
                        "so no x_avg: the x_avg pictures (Fig. 4, 9, 10, 11) need a SiRIIB "
                        "run")
  return x_avg.astype(jnp.float32)


def x_avg(model: nn.Module, variables, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """SiRIIB's x_avg of each image (running batch statistics; `train=False`).

  Args:
    model: a `models.Classifier` with SiRIIB (`model.siriib.enabled`) or a detached SR
      purifier.
    variables: its variables.
    images: (N, H, W, 3) float in [0, 1] (clean or adversarial), or uint8
      (`threat_model.check_images`: ValueError outside [0, 1] or not finite).
    batch_size: images per forward pass (the last batch padded: one compiled program).

  Returns:
    (N, H, W, 3) float32 in (0, 1).

  Raises:
    NoSiRIIBError (a ValueError): the model has no SiRIIB, hence no x_avg.
  """
  images = check_images(images, "images")
  return map_batches(lambda batch: _x_avg(model, variables, batch), (images,), batch_size)


def view_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`a − b` of each image mapped to [0, 1] for viewing (App. C.5; see the module doc).

  Args:
    a, b: (N, H, W, C) float, the same shape.

  Returns:
    (N, H, W, C) float32 in [0, 1]: per image `(d − min d) / (max d − min d)` over all its
    pixels and channels; 0.5 where an image's difference is constant (its range below
    `FLAT_RANGE`).

  Raises:
    ValueError: the shapes differ or are not (N, H, W, C).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f"view_difference needs two (N, H, W, C) arrays of one shape, got "
                     f"{a.shape} and {b.shape}")
  d = a - b
  low = d.min(axis=(1, 2, 3), keepdims=True)
  span = d.max(axis=(1, 2, 3), keepdims=True) - low
  flat = span < FLAT_RANGE
  out = np.where(flat, 0.5, (d - low) / np.where(flat, 1.0, span))
  return out.astype(np.float32)


def _check_like(name: str, array: np.ndarray, x: np.ndarray) -> np.ndarray:
  array = check_images(array, name)
  if array.shape != x.shape:
    raise ValueError(f"{name} has shape {array.shape}, the clean images {x.shape}: every row "
                     "must show the same test images")
  return array


def adversarial_rows(x: np.ndarray, x_adv: np.ndarray, x_avg_adv: np.ndarray,
                     attack: str = "") -> list[Row]:
  """Fig. 9's five rows: x, x_adv, x_avg(x_adv), x − x_adv, x_avg − x_adv (differences
  through `view_difference`).

  Args:
    x: (N, H, W, 3) clean images in [0, 1] (or uint8; ValueError outside it).
    x_adv: (N, H, W, 3) their adversarial examples.
    x_avg_adv: (N, H, W, 3) x_avg of x_adv (`x_avg(model, variables, x_adv)`).
    attack: the attack's name for the labels (e.g. 'PGD-20'); '' for none.

  Returns:
    5 `Row`s, images (N, H, W, 3) float32 in [0, 1].

  Raises:
    ValueError: the arrays' shapes differ.
  """
  x = check_images(x, "x")
  x_adv, x_avg_adv = _check_like("x_adv", x_adv, x), _check_like("x_avg", x_avg_adv, x)
  tag = f" ({attack})" if attack else ""
  return [Row("x", x), Row(f"x_adv{tag}", x_adv), Row(f"x_avg(x_adv){tag}", x_avg_adv),
          Row(f"x − x_adv{tag}", view_difference(x, x_adv)),
          Row(f"x_avg − x_adv{tag}", view_difference(x_avg_adv, x_adv))]


def attack_comparison_rows(x: np.ndarray,
                           by_attack: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[Row]:
  """Fig. 10's rows: x, then for each attack x_adv, x_avg(x_adv) and x_adv − x_avg.

  Args:
    x: (N, H, W, 3) clean images in [0, 1] (or uint8; ValueError outside it).
    by_attack: attack name (e.g. 'PGD-20', 'C&W-100') → (x_adv, x_avg(x_adv)), each
      (N, H, W, 3); rows follow its order.

  Returns:
    1 + 3 × len(by_attack) `Row`s.

  Raises:
    ValueError: no attack, or shapes differ.
  """
  if not by_attack:
    raise ValueError("attack_comparison_rows needs at least one attack")
  x = check_images(x, "x")
  rows = [Row("x", x)]
  for name, (x_adv, x_avg_adv) in by_attack.items():
    x_adv, x_avg_adv = _check_like("x_adv", x_adv, x), _check_like("x_avg", x_avg_adv, x)
    rows += [Row(f"x_adv ({name})", x_adv), Row(f"x_avg(x_adv) ({name})", x_avg_adv),
             Row(f"x_adv − x_avg ({name})", view_difference(x_adv, x_avg_adv))]
  return rows


def x_avg_rows(x: np.ndarray, by_label: Mapping[str, np.ndarray]) -> list[Row]:
  """x, then one row of x_avg per entry: Fig. 4 (one run per row, e.g. 'λ1 = 20', x_avg of
  the clean x) and Fig. 11 (one adaptive attack per row, x_avg of its x_adv).

  Args:
    x: (N, H, W, 3) clean images in [0, 1] (or uint8; ValueError outside it).
    by_label: row label → x_avg (N, H, W, 3); rows follow its order.

  Returns:
    1 + len(by_label) `Row`s.

  Raises:
    ValueError: no entry, or shapes differ.
  """
  if not by_label:
    raise ValueError("x_avg_rows needs at least one x_avg")
  x = check_images(x, "x")
  return [Row("x", x)] + [Row(label, _check_like(label, images, x))
                          for label, images in by_label.items()]


def adaptive_examples(model: nn.Module, variables, x: np.ndarray, y: np.ndarray,
                      key: jax.Array, eps: float, step_size: float, steps: int,
                      losses: Sequence[str] = adaptive.TABLE4_LOSSES) -> dict[str, np.ndarray]:
  """The adaptive attacks of Table 4 (`evaluation.adaptive.adaptive_pgd`, L∞) on a few
  points, every point attacked (for Fig. 11's pictures, not for accuracy).

  Args:
    model, variables: a SiRIIB `models.Classifier` and its variables.
    x: (N, H, W, 3) float in [0, 1] or uint8 (`threat_model.check_images`: ValueError
      outside [0, 1] or not finite); y: (N,) int labels.
    key: the PRNG key (each loss uses this same key: one random start for all).
    eps, step_size: L∞ radius and step, in [0, 1] pixel units (the paper: 8/255, 2/255).
    steps: PGD steps (the paper: 20).
    losses: names from `adaptive.TABLE4_LOSSES` ('ce', 'svd+info', …).

  Returns:
    `adaptive.loss_label(loss)` (e.g. 'L_CE + L_svd') → x_adv (N, H, W, 3) float32.

  Raises:
    NoSiRIIBError: the model has no SiRIIB; ValueError: an unknown loss.
  """
  x = check_images(x, "x")
  _x_avg(model, variables, x[:1])  # Raises NoSiRIIBError before any attack compiles.
  attack = jax.jit(adaptive.adaptive_pgd(eps, step_size, steps))
  fn = outputs_fn(model, variables)
  out = {}
  for loss in losses:
    target = adaptive.Target(fn, adaptive.loss_weights(loss))
    result = attack(target, jnp.asarray(x), jnp.asarray(y), key)
    out[adaptive.loss_label(loss)] = np.asarray(result.x_adv, np.float32)
  return out
