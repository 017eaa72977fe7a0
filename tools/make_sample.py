"""Regenerates the embedded CIFAR-10 sample in `siriib_jax/data/sample/` (run by hand).

  python tools/make_sample.py PATH   # PATH: the project's CIFAR copy, e.g. ../shared/data

PATH holds the project's copy of real CIFAR-10 (`cifar.py` with `load(name, split)`
and the `cifar10_{split}_lossless.npy` flags). The sample is drawn at random with a
fixed seed, the same number per class, only from images flagged lossless. The product
never reads PATH; only this script does.
"""

import argparse
import importlib.util
import pathlib
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from siriib_jax.data import sample  # noqa: E402  pylint: disable=wrong-import-position

PER_CLASS = {"train": 300, "test": 100}
NUM_CLASSES = 10
SEED = 0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("source", type=pathlib.Path, help="Folder with cifar.py and the CIFAR files.")
  args = parser.parse_args()
  spec = importlib.util.spec_from_file_location("cifar", args.source / "cifar.py")
  cifar = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cifar)
  sample.SAMPLE_DIR.mkdir(exist_ok=True)
  rng = np.random.default_rng(SEED)
  labels = {}
  for split, per_class in PER_CLASS.items():
    image, label = cifar.load("cifar10", split, verify=True)
    lossless = np.load(args.source / f"cifar10_{split}_lossless.npy")
    chosen = np.concatenate([rng.choice(np.flatnonzero(lossless & (label == c)), per_class,
                                        replace=False) for c in range(NUM_CLASSES)])
    chosen = rng.permutation(chosen)  # Not sorted by class.
    path = sample.SAMPLE_DIR / sample.mosaic_file(split)
    mosaic = Image.fromarray(sample.to_mosaic(image[chosen]))
    mosaic.save(path, lossless=True, quality=100, method=6)
    labels[split] = label[chosen].astype(np.uint8)
    print(f"{path}: {len(chosen)} images, {path.stat().st_size} bytes")
  np.savez_compressed(sample.SAMPLE_DIR / sample.LABELS_FILE, **labels)


if __name__ == "__main__":
  main()
