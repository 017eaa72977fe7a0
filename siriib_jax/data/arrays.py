"""In-memory image/label arrays and the `.npz` format they are exchanged in."""

import dataclasses

import numpy as np

from siriib_jax import config_errors


@dataclasses.dataclass(frozen=True)
class Arrays:
  """A split held in host memory.

  Attributes:
    image: uint8 [N, H, W, C].
    label: int32 [N].
  """
  image: np.ndarray
  label: np.ndarray

  def __len__(self) -> int:
    return len(self.label)

  def take(self, indices: np.ndarray) -> "Arrays":
    """The examples at `indices` (int [M]), in that order."""
    return Arrays(self.image[indices], self.label[indices])


def concatenate(a: Arrays, b: Arrays) -> Arrays:
  """`a` followed by `b`."""
  return Arrays(np.concatenate([a.image, b.image]), np.concatenate([a.label, b.label]))


def load_npz(path: str, *, image_size: int, num_classes: int, key: str) -> Arrays:
  """Reads and checks an `.npz` file with `image` (uint8 [N, S, S, 3]) and `label` ([N]).

  Args:
    path: the file.
    image_size: S, the expected height and width.
    num_classes: labels must lie in [0, num_classes).
    key: the config key that named the file, for error messages.

  Returns:
    The arrays, labels cast to int32.

  Raises:
    ConfigError: the file is missing or its arrays do not have that format.
  """
  try:
    with np.load(path, allow_pickle=False) as data:
      image, label = data["image"], data["label"]
  except (OSError, KeyError, ValueError) as e:
    config_errors.fail(key, path, f"it must be an .npz file with arrays 'image' and 'label' ({e})")
  expected = (image_size, image_size, 3)
  if image.dtype != np.uint8 or image.ndim != 4 or image.shape[1:] != expected:
    config_errors.fail(key, path, f"its 'image' must be uint8 [N, {image_size}, {image_size}, 3], "
                       f"not {image.dtype} {list(image.shape)}")
  if label.shape != image.shape[:1] or not np.issubdtype(label.dtype, np.integer):
    config_errors.fail(key, path, f"its 'label' must be integers [{len(image)}], "
                       f"not {label.dtype} {list(label.shape)}")
  if len(label) and not 0 <= label.min() <= label.max() < num_classes:
    config_errors.fail(key, path, f"its labels must lie in [0, {num_classes}), "
                       f"not [{label.min()}, {label.max()}]")
  return Arrays(image, label.astype(np.int32))
