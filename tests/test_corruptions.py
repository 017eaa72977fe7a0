"""Tests of siriib_jax.analysis.corruptions: CIFAR-10-C readers and Table 9's accuracies.

The release-layout folders are written here: pixel (0, 0) of every image encodes
(severity, corruption id, label) and pixel (0, 1) its row within its severity, so a model
can read them back and the tests know what each image is.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from siriib_jax import config_errors
from siriib_jax.analysis import corruptions as cc
from siriib_jax.configs import default
from siriib_jax.data import DatasetNotFoundError
from siriib_jax.data import stratified_subset


def write_release(folder, names=("fog", "frost"), n=6, labels=None, seed=0):
  """A CIFAR-10-C-layout folder: `<name>.npy` uint8 (5n, 32, 32, 3), `labels.npy` (5n,).

  Labels default to random ones that differ between severities (the release repeats
  them), so that a reader that mixed up severities would misalign them."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, 5 * n) if labels is None else np.asarray(labels)
  np.save(folder / "labels.npy", labels.astype(np.int64))
  for cid, name in enumerate(names):
    images = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.repeat(np.arange(1, 6), n)  # Severity.
    images[:, 0, 0, 1] = cid
    images[:, 0, 0, 2] = labels
    images[:, 0, 1, 0] = np.tile(np.arange(n), 5)  # Row within the severity.
    np.save(folder / f"{name}.npy", images)
  return folder


def decode(x):
  """(severity, corruption id, label) of float images in [0, 1]."""
  v = jnp.round(x[:, 0, 0, :] * 255).astype(jnp.int32)
  return v[:, 0], v[:, 1], v[:, 2]


def model(right, traces):
  """Logits of the encoded label where `right(severity, cid)`, of another class elsewhere;
  appends to `traces` each time it is traced."""
  def predict(x):
    traces.append(x.shape)
    severity, cid, label = decode(x)
    guess = jnp.where(right(severity, cid), label, (label + 1) % 10)
    return jax.nn.one_hot(guess, 10)
  return predict


def test_accuracy_per_corruption_and_severity(tmp_path):
  write_release(tmp_path)
  traces = {"sev3": [], "sev3_or_frost5": [], "oracle": []}
  fns = {
      "sev3": model(lambda s, c: s == 3, traces["sev3"]),
      "sev3_or_frost5": model(lambda s, c: (s == 3) | ((c == 1) & (s == 5)),
                              traces["sev3_or_frost5"]),
      "oracle": model(lambda s, c: s > 0, traces["oracle"]),
      "always0": lambda x: jnp.tile(jax.nn.one_hot(0, 10), (len(x), 1)),
  }
  # Batches of 4: each severity's 6 points are a full batch and a padded one of 2.
  result = cc.corruption_accuracy(fns, str(tmp_path), batch_size=4)
  assert result["models"] == list(fns) and result["corruptions"] == ["fog", "frost"]
  assert result["count"] == {c: {s: 6 for s in range(1, 6)} for c in ("fog", "frost")}
  only3 = {1: 0.0, 2: 0.0, 3: 100.0, 4: 0.0, 5: 0.0}
  assert result["accuracy"]["sev3"] == {"fog": only3, "frost": only3}
  assert result["accuracy"]["sev3_or_frost5"] == {"fog": only3, "frost": {**only3, 5: 100.0}}
  assert result["correct"]["sev3_or_frost5"]["frost"] == {1: 0, 2: 0, 3: 6, 4: 0, 5: 6}
  assert result["corruption_mean"]["sev3_or_frost5"] == {"fog": 20.0, "frost": 40.0}
  assert {m: result["mean"][m] for m in traces} == {"sev3": 20.0, "sev3_or_frost5": 30.0,
                                                     "oracle": 100.0}
  # Padding (black images, label 0) is not counted: class 0 is right only where labelled so.
  zeros = np.load(tmp_path / "labels.npy").reshape(5, 6) == 0
  assert result["correct"]["always0"]["fog"] == {s: int(zeros[s - 1].sum()) for s in range(1, 6)}
  # Compiled once per model: the partial batch is padded, not compiled at its size.
  assert all(t == [(4, 32, 32, 3)] for t in traces.values()), traces


def test_chunks_have_their_severity_and_aligned_labels(tmp_path):
  write_release(tmp_path, n=7)
  chunks = list(cc.iterate_corruptions(cc.ReleaseSource(tmp_path)))
  assert [(c.corruption, c.severity) for c in chunks] == [
      (name, s) for name in ("fog", "frost") for s in range(1, 6)]
  labels = np.load(tmp_path / "labels.npy")
  for chunk in chunks:
    assert isinstance(chunk.images, np.memmap)  # Read lazily.
    assert chunk.images.shape == (7, 32, 32, 3) and chunk.images.dtype == np.uint8
    assert chunk.labels.dtype == np.int32
    np.testing.assert_array_equal(chunk.images[:, 0, 0, 0], chunk.severity)
    np.testing.assert_array_equal(chunk.images[:, 0, 0, 1], ["fog", "frost"].index(
        chunk.corruption))
    np.testing.assert_array_equal(chunk.images[:, 0, 1, 0], np.arange(7))
    np.testing.assert_array_equal(chunk.labels, chunk.images[:, 0, 0, 2])
    np.testing.assert_array_equal(chunk.labels,
                                  labels[(chunk.severity - 1) * 7:chunk.severity * 7])


def test_available_corruptions_and_selection(tmp_path):
  write_release(tmp_path, names=("zoom_blur", "contrast", "fog"))
  (tmp_path / "README.txt").write_text("not an array")
  assert cc.available_release_corruptions(tmp_path) == ("contrast", "fog", "zoom_blur")
  source = cc.ReleaseSource(tmp_path, corruptions=["fog"])
  assert source.corruptions == ("fog",)
  every = cc.ReleaseSource(tmp_path)
  assert every.corruptions == ("contrast", "fog", "zoom_blur")
  chunks = list(cc.iterate_corruptions(every, corruptions=["zoom_blur"], severities=(2, 5)))
  assert [(c.corruption, c.severity) for c in chunks] == [("zoom_blur", 2), ("zoom_blur", 5)]
  with pytest.raises(ValueError, match=r"'zoom' is not in this source.*'zoom_blur'"):
    next(cc.iterate_corruptions(every, corruptions=["zoom"]))
  with pytest.raises(ValueError, match="severity 6"):
    next(cc.iterate_corruptions(source, severities=(6,)))


def _bad_image_shape(folder):
  np.save(folder / "fog.npy", np.zeros((30, 28, 28, 3), np.uint8))


def _bad_image_dtype(folder):
  np.save(folder / "fog.npy", np.zeros((30, 32, 32, 3), np.float32))


def _not_multiple_of_5(folder):
  np.save(folder / "fog.npy", np.zeros((29, 32, 32, 3), np.uint8))
  np.save(folder / "labels.npy", np.zeros(29, np.int64))


def _labels_not_multiple_of_5(folder):
  np.save(folder / "labels.npy", np.zeros(29, np.int64))


def _lengths_differ(folder):
  np.save(folder / "labels.npy", np.zeros(25, np.int64))


def _labels_2d(folder):
  np.save(folder / "labels.npy", np.zeros((30, 1), np.int64))


def _labels_out_of_range(folder):
  np.save(folder / "labels.npy", np.full(30, 10))


def _pickled(folder):
  np.save(folder / "fog.npy", np.array([{"a": 1}] * 30, dtype=object), allow_pickle=True)


@pytest.mark.parametrize("spoil, pattern", [
    (lambda f: (f / "labels.npy").unlink(), r"has no labels\.npy"),
    (_bad_image_shape, r"fog\.npy: the images must be uint8 \(5·n, 32, 32, 3\), not uint8 "
                       r"\[30, 28, 28, 3\]"),
    (_bad_image_dtype, r"fog\.npy: the images must be uint8.*not float32"),
    (_not_multiple_of_5, r"labels\.npy: its length 29 is not a positive multiple of 5"),
    (_labels_not_multiple_of_5, r"labels\.npy: its length 29 is not a positive multiple"),
    (_lengths_differ, r"fog\.npy: it has 30 images but labels\.npy has 25"),
    (_labels_2d, r"labels\.npy: the labels must be integers \(5·n,\), not int64 \[30, 1\]"),
    (_labels_out_of_range, r"labels must lie in \[0, 10\), not \[10, 10\]"),
    (_pickled, r"fog\.npy: it cannot be read as a \.npy array"),
    (lambda f: [(f / f"{n}.npy").unlink() for n in ("fog", "frost")],
     r"has labels\.npy but no <corruption>\.npy"),
])
def test_malformed_release_names_the_file_and_the_fix(tmp_path, spoil, pattern):
  write_release(tmp_path)
  spoil(tmp_path)
  with pytest.raises(cc.CorruptionDataError, match=pattern) as error:
    cc.ReleaseSource(tmp_path)
  assert "CIFAR-10-C.tar" in str(error.value)  # How to get well-formed files.


def test_missing_folder_or_corruption(tmp_path):
  with pytest.raises(cc.CorruptionDataError, match="this folder does not exist"):
    cc.ReleaseSource(tmp_path / "none")
  write_release(tmp_path)
  with pytest.raises(cc.CorruptionDataError, match=r"frots\.npy: no such file.*'frost'"):
    cc.ReleaseSource(tmp_path, corruptions=["frots"])


def test_max_per_severity(tmp_path):
  # The release's labels: the same per-severity labels repeated; classes 0 (2×), 1 (4×).
  write_release(tmp_path, n=6, labels=np.tile([1, 0, 1, 1, 0, 1], 5))
  source = cc.ReleaseSource(tmp_path)
  first = list(cc.iterate_corruptions(source, max_per_severity=4, subsample="first"))
  for chunk in first:
    np.testing.assert_array_equal(chunk.images[:, 0, 1, 0], np.arange(4))
    np.testing.assert_array_equal(chunk.images[:, 0, 0, 0], chunk.severity)
  stratified = list(cc.iterate_corruptions(source, max_per_severity=3, seed=1))
  rows = {tuple(c.images[:, 0, 1, 0]) for c in stratified}
  assert len(rows) == 1  # The same test images for every corruption and severity.
  for chunk in stratified:
    assert sorted(chunk.labels) == [0, 1, 1]  # The proportions kept: 1/3 of class 0.
    np.testing.assert_array_equal(chunk.labels, chunk.images[:, 0, 0, 2])
    np.testing.assert_array_equal(chunk.images[:, 0, 0, 0], chunk.severity)
  # The draw is the loader's stratified subset of a severity's labels, fixed by the seed.
  assert rows == {tuple(stratified_subset(np.array([1, 0, 1, 1, 0, 1]), 3, 1))}
  every = list(cc.iterate_corruptions(source, max_per_severity=6))
  assert all(len(c.labels) == 6 for c in every)
  result = cc.corruption_accuracy({"m": model(lambda s, c: s == 3, [])}, source,
                                  batch_size=8, max_per_severity=4)
  assert all(n == 4 for per in result["count"].values() for n in per.values())
  assert result["accuracy"]["m"]["fog"][3] == 100.0 and result["mean"]["m"] == 20.0
  with pytest.raises(ValueError, match="subsample = 'random'"):
    next(cc.iterate_corruptions(source, max_per_severity=3, subsample="random"))
  with pytest.raises(ValueError, match="max_per_severity = -1"):
    next(cc.iterate_corruptions(source, max_per_severity=-1))


def test_table9_markdown(tmp_path):
  write_release(tmp_path, names=("brightness", "frost", "shot_noise"))
  result = cc.corruption_accuracy(
      {"ResNet-18": model(lambda s, c: s == 3, []),
       "ResNet-18-SR": model(lambda s, c: (s == 3) | (c == 1), [])},
      cc.ReleaseSource(tmp_path), batch_size=16)
  text = cc.table9_markdown(result)
  lines = text.splitlines()
  assert lines[0] == ("| corruption | ResNet-18 s1 | ResNet-18 s2 | ResNet-18 s3 | "
                      "ResNet-18 s4 | ResNet-18 s5 | ResNet-18 mean | ResNet-18-SR s1 | "
                      "ResNet-18-SR s2 | ResNet-18-SR s3 | ResNet-18-SR s4 | "
                      "ResNet-18-SR s5 | ResNet-18-SR mean |")
  # Table 9's corruptions first in the paper's order, then the others.
  assert [line.split(" | ")[0] for line in lines[2:6]] == [
      "| shot_noise", "| frost", "| brightness", "| mean"]
  assert lines[3] == ("| frost | 0.00 | 0.00 | 100.00 | 0.00 | 0.00 | 20.00 | 100.00 | "
                      "100.00 | 100.00 | 100.00 | 100.00 | 100.00 |")
  assert lines[5].startswith("| mean | 0.00 | 0.00 | 100.00 | 0.00 | 0.00 | 20.00 | 33.33 |")
  assert lines[5].endswith("| 46.67 |")
  assert "Points per corruption and severity: 6 (every image)" in text
  # The result survives JSON (severity keys become strings) and renders the same.
  assert cc.table9_markdown(json.loads(json.dumps(result))) == text


def test_empty_models_or_bad_batch(tmp_path):
  write_release(tmp_path)
  with pytest.raises(ValueError, match="predict_fns is empty"):
    cc.corruption_accuracy({}, tmp_path, batch_size=4)
  with pytest.raises(ValueError, match="batch_size = 0"):
    cc.corruption_accuracy({"m": model(lambda s, c: s > 0, [])}, tmp_path, batch_size=0)


def _prepared(data_dir, config_name):
  """Writes TFDS metadata so that `cifar10_corrupted/<config_name>` counts as prepared."""
  builder = tfds.builder(f"cifar10_corrupted/{config_name}", data_dir=str(data_dir))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name="test", shard_lengths=[10000], num_bytes=0)]))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)


def test_tfds_source_with_mock_data_and_missing_configs(tmp_path):
  for name in ("fog_3", "elastic_3"):
    _prepared(tmp_path, name)
  dataset = default.get_config().dataset
  dataset.data_dir, dataset.download = str(tmp_path), False
  source = cc.TfdsSource(dataset, corruptions=["fog", "elastic_transform"])
  assert source.corruptions == ("elastic_transform", "fog")  # The release's names.
  with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path)):
    chunks = list(cc.iterate_corruptions(source, severities=(3,)))
    mocked = tfds.data_source("cifar10_corrupted/elastic_3", split="test",
                              data_dir=str(tmp_path))
    expected = np.array([mocked[i]["label"] for i in range(len(mocked))])
    result = cc.corruption_accuracy({"m": model(lambda s, c: s > 0, [])}, source,
                                    batch_size=4, severities=(3,), max_per_severity=5,
                                    subsample="first")
  assert [(c.corruption, c.severity) for c in chunks] == [("elastic_transform", 3),
                                                           ("fog", 3)]
  assert all(c.images.shape == (7, 32, 32, 3) and c.images.dtype == np.uint8
             for c in chunks)
  np.testing.assert_array_equal(chunks[0].labels, expected)
  assert result["count"] == {"elastic_transform": {3: 5}, "fog": {3: 5}}
  # Severity 2 was never prepared: the project's error, naming the command that prepares it.
  with pytest.raises(DatasetNotFoundError, match=r"'cifar10_corrupted/fog_2' is not prepared"
                     r".*python -m siriib_jax\.data\.prepare cifar10_corrupted/fog_2"):
    next(cc.iterate_corruptions(source, corruptions=["fog"], severities=(2,)))
  with pytest.raises(config_errors.ConfigError, match=r"dataset\.corruption = 'rain'"):
    cc.TfdsSource(dataset, corruptions=["rain"])
