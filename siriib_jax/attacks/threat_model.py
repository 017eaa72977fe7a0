"""The units of a threat model, checked on the host before anything is compiled: radii and
step sizes in [0, 1] pixel units (`check_radius`, `check_step_size`, `check_attack`), and
images as float in [0, 1] or uint8 (`check_images`). docs/evaluation.md says why.
"""

import math
from typing import Any, Optional, Sequence

import jax
import numpy as np

from siriib_jax.config_errors import fail

# Float images may overshoot [0, 1] by this much (float rounding of a conversion) and pass.
IMAGE_TOLERANCE = 1e-6
_UNITS = "{} is in [0, 1] pixel units"


def _scalar(value: Any) -> Optional[float]:
  """`value` as a float; None for a traced value (checked where it is concrete)."""
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, bool):
    raise TypeError
  return float(np.asarray(value).item())


def _pixel_units(value: float, what: str, symbol: str, example: str) -> str:
  if 1 < value <= 255:
    return (f"{_UNITS.format(symbol)}: write {value:g}/255, not {value:g} (an {what} above 1 "
            f"spans the whole image box [0, 1])")
  return f"{_UNITS.format(symbol)}: an {what} is at most 1 (e.g. {example} for CIFAR)"


def _number_problem(value: Any, symbol: str, example: str) -> tuple[Optional[float], str]:
  """(`value` as a float, "") or (None, what is wrong); (None, "") for a traced value."""
  try:
    number = _scalar(value)
  except (TypeError, ValueError):
    return None, f"it must be a number: {_UNITS.format(symbol)} (e.g. {example})"
  if number is not None and (not math.isfinite(number) or number < 0):
    return None, f"it must be a finite number ≥ 0: {_UNITS.format(symbol)} (e.g. {example})"
  return number, ""


def radius_problem(value: Any, norm: str, shape: Optional[Sequence[int]] = None
                   ) -> Optional[str]:
  """What is wrong with `value` as the radius of a `norm` ε-ball, or None if it is legal:
  L∞ in [0, 1]; L2 in [0, √(H·W·C)] (the diameter of [0, 1]^(H·W·C), checked when the image
  `shape` (H, W, C) is given); any other norm ≥ 0 (the factory checks the norm itself)."""
  value, problem = _number_problem(value, "ε", "8/255")
  if value is None:
    return problem or None
  if norm == "linf" and value > 1:
    return _pixel_units(value, "L∞ radius", "ε", "8/255")
  if norm == "l2" and shape is not None:
    size = int(np.prod(shape))
    if value > math.sqrt(size):
      return (f"{_UNITS.format('ε')}, and no two images of shape {tuple(shape)} are "
              f"further apart in L2 than √{size} = {math.sqrt(size):.4g} (e.g. 0.5 for "
              f"CIFAR-10)")
  return None


def step_size_problem(value: Any, norm: str) -> Optional[str]:
  """What is wrong with `value` as the step size α of a `norm` attack, or None: L∞ in
  [0, 1] (a step of 1 already crosses the image box); L2 any finite α ≥ 0."""
  value, problem = _number_problem(value, "α", "2/255")
  if value is None:
    return problem or None
  if norm == "linf" and value > 1:
    return _pixel_units(value, "L∞ step size", "α", "2/255")
  return None


def check_radius(value: Any, norm: str, name: str,
                 shape: Optional[Sequence[int]] = None) -> None:
  """Raises ValueError naming the argument `name` if `value` is no `norm` radius
  (`radius_problem`)."""
  problem = radius_problem(value, norm, shape)
  if problem:
    raise ValueError(f"{name} = {value!r} is not a valid {norm} radius: {problem}.")


def check_step_size(value: Any, norm: str, name: str) -> None:
  """Raises ValueError naming the argument `name` if `value` is no `norm` step size
  (`step_size_problem`)."""
  problem = step_size_problem(value, norm)
  if problem:
    raise ValueError(f"{name} = {value!r} is not a valid {norm} step size: {problem}.")


def check_attack(eps: Any, norm: str, step_size: Any = None) -> None:
  """An attack factory's check of its arguments `eps` and (if not None) `step_size`.

  Raises:
    ValueError naming the argument: a negative or non-finite value, or an L∞ one above 1
      (e.g. 8 for 8/255).
  """
  check_radius(eps, norm, "eps")
  if step_size is not None:
    check_step_size(step_size, norm, "step_size")


def check_config_radius(key: str, value: Any, norm: str,
                        shape: Optional[Sequence[int]] = None) -> None:
  """Raises `ConfigError` naming `config.<key>` if `value` is no `norm` radius."""
  problem = radius_problem(value, norm, shape)
  if problem:
    fail(key, value, problem)


def check_config_step_size(key: str, value: Any, norm: str) -> None:
  """Raises `ConfigError` naming `config.<key>` if `value` is no `norm` step size."""
  problem = step_size_problem(value, norm)
  if problem:
    fail(key, value, problem)


def check_images(images: Any, name: str) -> np.ndarray:
  """Checks images on the host and returns them as float32 in [0, 1].

  uint8 images (0 … 255) are divided by 255. Any other dtype must hold finite values in
  [0, 1], up to `IMAGE_TOLERANCE` (values within it pass unchanged).

  Args:
    images: (N, H, W, C) (or any shape) uint8 or float array; NumPy or JAX, not traced.
    name: the argument's name, for the error.

  Returns:
    float32 NumPy array of the same shape.
  Raises:
    ValueError naming `name`: a non-finite entry, or a value outside [0, 1] — float
      images in 0–255 (divide by 255, or pass uint8), or images normalised outside the
      model (the model normalises inside: `config.model.mean` / `config.model.std`).
  """
  array = np.asarray(images)
  if array.dtype == np.uint8:
    return array.astype(np.float32) / 255.0
  array = np.asarray(array, np.float32)
  if not array.size:
    return array
  finite = np.isfinite(array)
  if not finite.all():
    raise ValueError(f"{name} has {int(array.size - finite.sum())} non-finite entries (NaN or "
                     f"inf) of {array.size}: images must be finite, in [0, 1].")
  low, high = float(array.min()), float(array.max())
  if low < -IMAGE_TOLERANCE or high > 1 + IMAGE_TOLERANCE:
    raise ValueError(
        f"{name} holds values in [{low:.4g}, {high:.4g}]: images must be float in [0, 1] "
        f"(or uint8), the pixel units of ε. The two usual causes: float images in 0–255 "
        f"(divide by 255, or pass uint8), or images normalised outside the model (pass "
        f"[0, 1] images: the model normalises them itself, with config.model.mean and "
        f"config.model.std).")
  return array
