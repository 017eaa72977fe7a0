"""Prepares a TFDS dataset once, as ArrayRecord files the loader reads without TensorFlow.

  python -m siriib_jax.data.prepare cifar10 --data_dir DIR
  python -m siriib_jax.data.prepare cifar10_corrupted/gaussian_noise_5 --data_dir DIR
  python -m siriib_jax.data.prepare tiny_imagenet --data_dir DIR --manual_dir ZIP_DIR

CIFAR needs internet access and TensorFlow (`pip install tensorflow-cpu`) for this
step only; Tiny-ImageNet needs neither, only `tiny-imagenet-200.zip` in ZIP_DIR.
Then train with `--config.dataset.data_dir=DIR`.
"""

import argparse

import tensorflow_datasets as tfds

from siriib_jax.data import tiny_imagenet  # pylint: disable=unused-import  (registers the builder)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("name", help="TFDS name, e.g. cifar10, cifar100, tiny_imagenet, "
                      "cifar10_corrupted/fog_3.")
  parser.add_argument("--data_dir", required=True, help="TFDS data directory to write to.")
  parser.add_argument("--manual_dir",
                      help="Folder of manually downloaded files (the Tiny-ImageNet zip).")
  args = parser.parse_args()
  builder = tfds.builder(args.name, data_dir=args.data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
  print(f"Prepared {builder.info.full_name} in {builder.data_dir}")


if __name__ == "__main__":
  main()
