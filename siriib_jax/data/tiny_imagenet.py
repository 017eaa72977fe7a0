"""TFDS builder for Tiny-ImageNet (64x64, 200 classes) from the official zip.

TFDS ships no Tiny-ImageNet builder, so the project ships this one. It reads
`tiny-imagenet-200.zip` (the file published by the Stanford CS231n course) from
TFDS's manual directory and writes an ArrayRecord dataset that the loader reads
with `tfds.data_source`. Preparing it needs no TensorFlow:

  python -m siriib_jax.data.prepare tiny_imagenet --data_dir DATA_DIR --manual_dir DIR

where DIR contains `tiny-imagenet-200.zip`. The official test images carry no
labels, so only `train` (100,000 images) and `validation` (10,000) are built.
The JPEG bytes are stored unchanged; grayscale images decode to 3 equal channels.
Label `i` is the i-th WordNet id of `wnids.txt` in sorted order.
"""

import os
import zipfile

import tensorflow_datasets as tfds

ZIP_NAME = "tiny-imagenet-200.zip"
NUM_CLASSES = 200
IMAGE_SIZE = 64


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """Tiny-ImageNet-200, train and validation splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Train and validation splits of tiny-imagenet-200.zip."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Place {ZIP_NAME} (from the CS231n Tiny-ImageNet page) in the manual "
      "directory, by default <data_dir>/downloads/manual/.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    path = os.fspath(dl_manager.manual_dir / ZIP_NAME)
    with zipfile.ZipFile(path) as archive:
      wnids = sorted(archive.read("tiny-imagenet-200/wnids.txt").decode().split())
      annotations = archive.read("tiny-imagenet-200/val/val_annotations.txt").decode()
    if len(wnids) != NUM_CLASSES:
      raise ValueError(f"{path}: wnids.txt lists {len(wnids)} classes, expected {NUM_CLASSES}.")
    self.info.features["label"].names = wnids
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    val_labels = {}
    for line in annotations.splitlines():
      if line.strip():
        filename, wnid = line.split("\t")[:2]
        val_labels[f"tiny-imagenet-200/val/images/{filename}"] = label_of[wnid]
    return {
        "train": self._generate_examples(path, "train", label_of, val_labels),
        "validation": self._generate_examples(path, "validation", label_of, val_labels),
    }

  def _generate_examples(self, path, split, label_of, val_labels):
    """Yields (member name, example) for every image of `split` in the zip."""
    with zipfile.ZipFile(path) as archive:
      for name in archive.namelist():
        if not name.endswith(".JPEG"):
          continue
        parts = name.split("/")
        if split == "train" and parts[1] == "train":
          label = label_of[parts[2]]
        elif split == "validation" and name in val_labels:
          label = val_labels[name]
        else:
          continue
        yield name, {"image": archive.read(name), "label": label}

