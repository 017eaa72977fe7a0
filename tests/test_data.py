"""Tests of siriib_jax.data: sources, the resumable per-host loader, augmentation, sample."""

import importlib.util
import io
import pathlib
import subprocess
import sys
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from siriib_jax.configs import default
from tests.helpers import register_prepared_cifar10
from siriib_jax import config_errors
from siriib_jax import data
from siriib_jax.data import prepare
from siriib_jax.data import sample
from siriib_jax.data import tiny_imagenet

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def dataset_config(**overrides):
  config = default.get_config().dataset
  config.update(overrides)
  return config


def identifiable(n, num_classes=10, marker=0, seed=0):
  """n images whose pixel (0, 0) encodes (index, marker); labels cycle over classes, shuffled."""
  image = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  image[:, 0, 0, 0], image[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
  image[:, 0, 0, 2] = marker
  label = np.random.default_rng(seed + 1).permutation(np.arange(n) % num_classes)
  return image, label


def ids(images):
  return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 0, 1].astype(np.int64)


@pytest.fixture
def npz_dir(tmp_path):
  """`name = "npz"` data: 1,000 identifiable training images, 230 test images."""
  for split, n in (("train", 1000), ("test", 230)):
    image, label = identifiable(n, seed=len(split))
    np.savez(tmp_path / f"{split}.npz", image=image, label=label)
  return tmp_path


def npz_pipeline(npz_dir, batch=40, seed=0, process_index=0, process_count=1, **overrides):
  config = dataset_config(name="npz", data_dir=str(npz_dir), validation_size=100, **overrides)
  return data.InputPipeline(config, global_batch_size=batch, seed=seed,
                            process_index=process_index, process_count=process_count)


# Sources.


def test_tfds_data_source_route_with_mock_data(tmp_path):
  register_prepared_cifar10(tmp_path)
  config = dataset_config(data_dir=str(tmp_path), validation_size=10)
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path)):
    pipeline = data.InputPipeline(config, global_batch_size=10, seed=0, process_count=1,
                                  process_index=0)
    mocked = tfds.data_source("cifar10", split="train", data_dir=str(tmp_path))
    expected = np.stack([mocked[i]["image"] for i in range(len(mocked))])
    test = pipeline.eval_data("test")
  assert len(pipeline.validation) == 10 and pipeline.steps_per_epoch == 5
  seen = np.concatenate([pipeline.train_batch(s)["image"] for s in range(5)]
                        + [pipeline.validation.image])
  assert sorted(map(bytes, seen)) == sorted(map(bytes, expected))
  assert test.image.shape == (60, 32, 32, 3) and test.label.dtype == np.int32


def make_tiny_imagenet_zip(path, per_class=2, num_val=30):
  """A zip shaped like tiny-imagenet-200.zip: 200 classes, one grayscale image per class."""
  rng = np.random.default_rng(0)
  wnids = [f"n{i:08d}" for i in rng.permutation(200)]
  def jpeg(shape):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids))
    for wnid in wnids:
      for j in range(per_class):
        archive.writestr(f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{j}.JPEG",
                         jpeg((64, 64) if j == 0 else (64, 64, 3)))
    lines = [f"val_{j}.JPEG\t{wnids[j]}\t0\t0\t9\t9" for j in range(num_val)]
    for j in range(num_val):
      archive.writestr(f"tiny-imagenet-200/val/images/val_{j}.JPEG", jpeg((64, 64, 3)))
    archive.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(lines))
    archive.writestr("tiny-imagenet-200/test/images/test_0.JPEG", jpeg((64, 64, 3)))
  return wnids


def test_tiny_imagenet_builder_prepares_and_loads_without_tensorflow(tmp_path, monkeypatch):
  (tmp_path / "manual").mkdir()
  wnids = make_tiny_imagenet_zip(tmp_path / "manual" / tiny_imagenet.ZIP_NAME)
  monkeypatch.setattr(sys, "argv", ["prepare", "tiny_imagenet", "--data_dir",
                                    str(tmp_path / "tfds"), "--manual_dir",
                                    str(tmp_path / "manual")])
  prepare.main()
  builder = tfds.builder("tiny_imagenet", data_dir=tmp_path / "tfds")
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  config = dataset_config(name="tiny_imagenet", data_dir=str(tmp_path / "tfds"), image_size=64,
                          num_classes=200, validation_size=200)
  pipeline = data.InputPipeline(config, global_batch_size=200, seed=0, process_index=0,
                                process_count=1)
  batch = pipeline.train_batch(0)
  test = pipeline.eval_data("test")
  # Reading needs no TensorFlow: checked in a fresh interpreter, since other tests of the
  # session (clu's TensorBoard writer) may already have imported it into this one.
  check = ("import sys, siriib_jax.data as d, ml_collections as m;"
           f"c = m.ConfigDict({config.to_dict()!r});"
           "p = d.InputPipeline(c, global_batch_size=200, seed=0, process_index=0,"
           " process_count=1); p.train_batch(0); p.eval_data('test');"
           "print('tensorflow' in sys.modules)")
  fresh = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).parent.parent, check=True)
  assert fresh.stdout.strip() == "False", fresh.stderr[-2000:]
  assert batch["image"].shape == (200, 64, 64, 3) and len(pipeline.validation) == 200
  assert sorted(np.concatenate([batch["label"], pipeline.validation.label])) == sorted(
      list(range(200)) * 2)
  assert builder.info.features["label"].names == sorted(wnids)
  gray = batch["image"][(batch["image"][..., 0] == batch["image"][..., 2]).all((1, 2))]
  assert len(gray) >= 50  # Grayscale JPEGs decode to 3 equal channels.
  assert sorted(test.label) == sorted(sorted(wnids).index(w) for w in wnids[:30])


def test_model_and_train_step_import_without_tfds():
  # TFDS (and the TensorFlow it may pull in) is imported only when a TFDS split is read, so
  # the train step runs where neither is installed (a GPU image, the npz source).
  check = ("import sys, siriib_jax.data, siriib_jax.train_step, siriib_jax.attacks;"
           "print('tensorflow_datasets' in sys.modules)")
  fresh = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).parent.parent, check=True)
  assert fresh.stdout.strip() == "False", fresh.stderr[-2000:]


def test_missing_tfds_data_fails_fast_naming_data_dir(tmp_path):
  start = time.perf_counter()
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.InputPipeline(dataset_config(data_dir=str(tmp_path / "none"), download=False),
                       global_batch_size=8, seed=0, process_index=0, process_count=1)
  assert time.perf_counter() - start < 10
  assert isinstance(error.value, config_errors.ConfigError)
  message = str(error.value)
  assert "config.dataset.data_dir" in message and str(tmp_path / "none") in message
  assert "python -m siriib_jax.data.prepare cifar10" in message and "cifar10_sample" in message


def test_npz_source_alone(npz_dir):
  pipeline = npz_pipeline(npz_dir)
  assert pipeline.steps_per_epoch == 900 // 40
  test = pipeline.eval_data("test")
  expected, label = identifiable(230, seed=4)
  np.testing.assert_array_equal(test.image, expected)
  np.testing.assert_array_equal(test.label, label)


def test_npz_with_bad_arrays_names_the_key(tmp_path, npz_dir):
  np.savez(tmp_path / "extra.npz", image=np.zeros((5, 32, 32, 3), np.float32), label=np.zeros(5))
  with pytest.raises(config_errors.ConfigError, match="dataset.extra_npz.*uint8"):
    npz_pipeline(npz_dir, extra_npz=str(tmp_path / "extra.npz"))


def test_extra_npz_too_small_for_its_share_of_the_batch(tmp_path, npz_dir):
  image, label = identifiable(5, marker=1)
  np.savez(tmp_path / "extra.npz", image=image, label=label)
  with pytest.raises(config_errors.ConfigError, match="dataset.extra_npz.*5 training examples"):
    npz_pipeline(npz_dir, extra_npz=str(tmp_path / "extra.npz"), extra_fraction=0.5)


def test_extra_npz_concatenated(tmp_path, npz_dir):
  image, label = identifiable(300, marker=1, seed=7)
  np.savez(tmp_path / "extra.npz", image=image, label=label)
  pipeline = npz_pipeline(npz_dir, extra_npz=str(tmp_path / "extra.npz"))
  assert pipeline.steps_per_epoch == 1200 // 40
  epoch = np.concatenate([pipeline.train_batch(s)["image"] for s in range(30)])
  is_extra = epoch[:, 0, 0, 2] == 1
  assert is_extra.sum() == 300 and len(set(ids(epoch[is_extra]))) == 300
  index = np.concatenate([pipeline.train_batch(s)["index"] for s in range(30)])
  assert pipeline.num_train_examples == 1200 and sorted(index) == list(range(1200))
  assert (is_extra == (index >= 900)).all()


def test_extra_npz_fraction_of_each_batch(tmp_path, npz_dir):
  image, label = identifiable(200, marker=1, seed=7)
  np.savez(tmp_path / "extra.npz", image=image, label=label)
  pipeline = npz_pipeline(npz_dir, extra_npz=str(tmp_path / "extra.npz"), extra_fraction=0.25)
  assert pipeline.steps_per_epoch == 900 // 30
  for step in (0, 19, 20, 45):  # The extra stream's epochs are 200 / 10 = 20 steps.
    markers = pipeline.train_batch(step)["image"][:, 0, 0, 2]
    assert list(markers) == [0] * 30 + [1] * 10
  first_extra_epoch = np.concatenate([pipeline.train_batch(s)["image"][30:] for s in range(20)])
  assert sorted(ids(first_extra_epoch)) == list(range(200))
  assert pipeline.num_train_examples == 1100
  assert (pipeline.train_batch(3)["index"][30:] >= 900).all()


# Loader.


def test_training_order_is_a_function_of_seed_and_step(npz_dir):
  full = npz_pipeline(npz_dir, seed=5)
  from_zero = [full.train_batch(s) for s in range(50)]  # 22 steps per epoch: spans 3 epochs.
  resumed = npz_pipeline(npz_dir, seed=5).train_batches(start_step=17)
  for step in range(17, 50):
    batch = next(resumed)
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(batch[key], from_zero[step][key])
  assert from_zero[0]["image"].dtype == np.uint8 and from_zero[0]["label"].dtype == np.int32
  index_of = {}  # "index" names the same example in every epoch.
  for batch in from_zero:
    for i, example in zip(batch["index"], ids(batch["image"])):
      assert index_of.setdefault(i, example) == example
  assert 880 <= len(index_of) and set(index_of) <= set(range(900))
  assert from_zero[0]["index"].dtype == np.int32
  other_seed = npz_pipeline(npz_dir, seed=6).train_batch(0)
  assert not np.array_equal(ids(other_seed["image"]), ids(from_zero[0]["image"]))
  assert not np.array_equal(ids(from_zero[22]["image"]), ids(from_zero[0]["image"]))


def test_host_shards_are_disjoint_and_cover_the_epoch(npz_dir):
  hosts = [npz_pipeline(npz_dir, batch=40, process_index=p, process_count=4) for p in range(4)]
  per_host = [np.concatenate([ids(h.train_batch(s)["image"]) for s in range(22)]) for h in hosts]
  assert all(len(shard) == 22 * 10 for shard in per_host)
  everything = np.concatenate(per_host)
  assert len(set(everything)) == len(everything) == 880  # 900 training examples, 20 dropped.
  single = npz_pipeline(npz_dir, batch=40)
  for step in (0, 21, 22):
    joined = np.concatenate([h.train_batch(step)["image"] for h in hosts])
    np.testing.assert_array_equal(joined, single.train_batch(step)["image"])


def test_validation_split_is_held_out_stratified_and_fixed(npz_dir):
  pipeline = npz_pipeline(npz_dir)
  held_out = set(ids(pipeline.validation.image))
  trained = set(np.concatenate([ids(pipeline.train_batch(s)["image"]) for s in range(22 * 3)]))
  assert len(held_out) == 100 and not held_out & trained
  assert len(trained) == 900  # Over 3 epochs every remaining example is seen.
  assert list(np.bincount(pipeline.validation.label)) == [10] * 10
  again = npz_pipeline(npz_dir, seed=9)  # The training seed does not move it ...
  assert set(ids(again.validation.image)) == held_out
  other = npz_pipeline(npz_dir, validation_seed=1)  # ... validation_seed does.
  assert set(ids(other.validation.image)) != held_out


def test_stratified_subset():
  labels = np.repeat(np.arange(4), [400, 300, 200, 100])  # Sorted by class, unbalanced.
  subset = data.stratified_subset(labels, 100, seed=3)
  assert len(set(subset)) == 100 and list(subset) == sorted(subset)
  assert list(np.bincount(labels[subset])) == [40, 30, 20, 10]
  assert np.array_equal(subset, data.stratified_subset(labels, 100, seed=3))
  assert not np.array_equal(subset, data.stratified_subset(labels, 100, seed=4))
  odd = data.stratified_subset(labels, 7, seed=0)  # 2.8, 2.1, 1.4, 0.7 by largest remainder.
  assert list(np.bincount(labels[odd], minlength=4)) == [3, 2, 1, 1]


def test_eval_batches_pad_and_mask_across_hosts(npz_dir):
  hosts = [npz_pipeline(npz_dir, process_index=p, process_count=2) for p in range(2)]
  per_host = [list(h.eval_batches("test", batch_size=64)) for h in hosts]
  assert [len(b) for b in per_host] == [4, 4]  # ceil(230 / 64)
  seen = []
  for batches in per_host:
    for batch in batches:
      assert batch["image"].shape == (32, 32, 32, 3) and batch["mask"].dtype == bool
      assert not batch["image"][~batch["mask"]].any() and not batch["label"][~batch["mask"]].any()
      seen.extend(ids(batch["image"][batch["mask"]]))
  assert sorted(seen) == list(range(230))
  subset = [list(h.eval_batches("validation", batch_size=20, subset_size=30)) for h in hosts]
  subset_ids = [ids(b["image"][b["mask"]]) for batches in subset for b in batches]
  assert [len(x) for x in subset_ids] == [10, 10, 10, 0]  # Host 0: [0, 10), [20, 30).
  chosen = np.concatenate(subset_ids)
  assert len(set(chosen)) == 30 and set(chosen) <= set(ids(hosts[0].validation.image))
  subset_labels = np.concatenate([b["label"][b["mask"]] for batches in subset for b in batches])
  assert list(np.bincount(subset_labels)) == [3] * 10


def test_eval_only_pipeline_reads_no_training_data():
  config = dataset_config(name="cifar10_sample")
  pipeline = data.InputPipeline(config, global_batch_size=100, seed=0, process_index=0,
                                process_count=1, training=False)
  assert len(pipeline.eval_data("test")) == 1000
  with pytest.raises(ValueError, match="training=False"):
    pipeline.train_batch(0)


# Config checks.


@pytest.mark.parametrize("overrides, kwargs, pattern", [
    (dict(name="imagenet"), {}, r"dataset\.name.*one of"),
    (dict(image_size=64), {}, r"dataset\.image_size.*32"),
    (dict(num_classes=0), {}, r"dataset\.num_classes.*positive"),
    (dict(validation_size=-1), {}, r"dataset\.validation_size"),
    (dict(validation_size=5), {}, r"dataset\.validation_size.*per class"),
    (dict(extra_npz="/no/such.npz"), {}, r"dataset\.extra_npz.*existing"),
    (dict(extra_fraction=0.5), {}, r"dataset\.extra_fraction.*extra_npz"),
    (dict(name="npz", data_dir="/no/such"), {}, r"dataset\.data_dir.*train\.npz"),
    (dict(name="cifar10_corrupted", corruption="rain"), dict(training=False),
     r"dataset\.corruption.*gaussian_noise"),
    (dict(name="cifar10_corrupted", severity=6), dict(training=False), r"dataset\.severity"),
    (dict(name="cifar10_corrupted"), {}, r"dataset\.name.*evaluation only"),
    ({}, dict(global_batch_size=100, process_count=8), r"config\.batch_size.*8"),
])
def test_validate_dataset_config_rejects(overrides, kwargs, pattern):
  with pytest.raises(config_errors.ConfigError, match=pattern):
    data.validate_dataset_config(dataset_config(**overrides), **kwargs)


def test_validate_dataset_config_accepts_defaults():
  data.validate_dataset_config(dataset_config(), global_batch_size=128, process_count=4)
  data.validate_dataset_config(dataset_config(name="cifar10_corrupted", corruption="fog",
                                              severity=3), training=False)


# Augmentation.


def test_to_float():
  images = jnp.array([[0, 51, 255]], jnp.uint8)
  np.testing.assert_allclose(data.to_float(images), [[0.0, 0.2, 1.0]])
  assert data.to_float(jnp.ones((2,), jnp.float16)).dtype == jnp.float32


def test_augment_is_a_random_crop_and_flip_per_example():
  images = np.random.default_rng(0).integers(1, 256, (64, 8, 8, 3), dtype=np.uint8)
  augment = jax.jit(data.augment)
  out = augment(jax.random.key(1), images)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert 0.0 <= out.min() and out.max() <= 1.0
  np.testing.assert_array_equal(out, augment(jax.random.key(1), images))
  assert not np.array_equal(out, augment(jax.random.key(2), images))
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  out = np.rint(np.asarray(out) * 255).astype(np.uint8)
  found = set()
  for i in range(64):
    matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
               if np.array_equal(out[i], (lambda c: c[:, ::-1] if flip else c)(
                   padded[i, dy:dy + 8, dx:dx + 8]))]
    assert matches, f"example {i} is not a flipped or unflipped crop of its padded image"
    found.update(matches)
  assert len({(dy, dx) for dy, dx, _ in found}) > 10  # Offsets vary per example ...
  assert {flip for _, _, flip in found} == {False, True}  # ... and so do flips.


# Embedded sample.


def test_embedded_sample_is_small_balanced_and_loads():
  files = list(sample.SAMPLE_DIR.iterdir())
  assert sum(f.stat().st_size for f in files) <= 8 * 2**20
  train, test = sample.load("train"), sample.load("test")
  assert train.image.shape == (3000, 32, 32, 3) and train.image.dtype == np.uint8
  assert list(np.bincount(train.label)) == [300] * 10
  assert list(np.bincount(test.label)) == [100] * 10
  assert not (np.diff(test.label) >= 0).all()  # Stored shuffled, not sorted by class.
  assert 0.4 < train.image.mean() / 255 < 0.55 and train.image.std() > 40


@pytest.mark.skipif(not (SHARED_DATA / "cifar.py").exists(), reason="../shared/data is absent")
@pytest.mark.parametrize("split", ["train", "test"])
def test_embedded_sample_is_real_cifar10(split):
  spec = importlib.util.spec_from_file_location("cifar", SHARED_DATA / "cifar.py")
  cifar = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cifar)
  image, label = cifar.load("cifar10", split)
  index = {bytes(x): y for x, y in zip(image, label)}
  embedded = sample.load(split)
  assert [index.get(bytes(x)) for x in embedded.image] == list(embedded.label)


# Downloading where the network answers (config.dataset.download, download_timeout).


def _http_server(status=200):
  """A local HTTP server answering every HEAD request with `status`; returns its URL."""
  import http.server  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # pylint: disable=invalid-name
      self.send_response(status)
      self.end_headers()

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, f"http://127.0.0.1:{server.server_address[1]}/cifar-10-binary.tar.gz"


def _silent_server():
  """A TCP listener that accepts connections and never answers; returns its URL."""
  import socket  # pylint: disable=import-outside-toplevel
  listener = socket.socket()
  listener.bind(("127.0.0.1", 0))
  listener.listen(8)
  return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/cifar-10-binary.tar.gz"


def test_probe_says_whether_the_network_answers_within_its_timeout(monkeypatch):
  from siriib_jax.data import sources  # pylint: disable=import-outside-toplevel
  server, url = _http_server(status=404)  # Any status is an answer.
  try:
    assert sources.probe_url(url, 2.0) is None
  finally:
    server.shutdown()
    server.server_close()
  listener, silent = _silent_server()
  try:
    start = time.perf_counter()
    why = sources.probe_url(silent, 1.0)
    assert why and time.perf_counter() - start < 3
  finally:
    listener.close()
  assert "Connection refused" in sources.probe_url(url, 2.0)  # The server is gone.
  # A lookup that ignores socket timeouts (e.g. DNS) is bounded too.
  monkeypatch.setattr(sources.urllib.request, "urlopen", lambda *a, **k: time.sleep(30))
  start = time.perf_counter()
  assert sources.probe_url("http://example.invalid/", 0.5) == "no answer within 0.5 s"
  assert time.perf_counter() - start < 2


def test_offline_run_fails_within_seconds_naming_the_prepare_command(tmp_path, monkeypatch):
  from siriib_jax.data import sources  # pylint: disable=import-outside-toplevel
  listener, silent = _silent_server()
  monkeypatch.setitem(sources.DOWNLOAD_URLS, "cifar10", silent)
  config = dataset_config(data_dir=str(tmp_path / "tfds"), download_timeout=1.0)
  start = time.perf_counter()
  try:
    with pytest.raises(data.DatasetNotFoundError) as error:
      data.InputPipeline(config, global_batch_size=8, seed=0, process_index=0,
                         process_count=1)
  finally:
    listener.close()
  assert time.perf_counter() - start < 10
  message = str(error.value)
  assert f"{silent} did not answer" in message and "download_timeout = 1 s" in message
  assert "config.dataset.data_dir" in message and str(tmp_path / "tfds") in message
  assert "python -m siriib_jax.data.prepare cifar10" in message and "cifar10_sample" in message
  assert not (tmp_path / "tfds" / "cifar10").exists()


def test_download_off_never_asks_the_network(tmp_path, monkeypatch):
  from siriib_jax.data import sources  # pylint: disable=import-outside-toplevel
  def probe(*args):
    raise AssertionError(f"probed {args} with config.dataset.download=False")
  monkeypatch.setattr(sources, "probe_url", probe)
  config = dataset_config(data_dir=str(tmp_path), download=False)
  with pytest.raises(data.DatasetNotFoundError, match=r"Downloading is off \(config\.dataset"
                                                      r"\.download=False\).*prepare cifar10"):
    data.InputPipeline(config, global_batch_size=8, seed=0, process_index=0, process_count=1)


def test_main_command_downloads_and_prepares_where_the_network_answers(tmp_path, monkeypatch):
  """The download path with TFDS's mocking: `download_and_prepare` (a no-op under
  `mock_data`) is wrapped to record its call and write the prepared metadata, as the real
  one does; the examples are then TFDS's mock examples."""
  from siriib_jax.data import sources  # pylint: disable=import-outside-toplevel
  server, url = _http_server()
  monkeypatch.setitem(sources.DOWNLOAD_URLS, "cifar10", url)
  data_dir = tmp_path / "tfds"
  calls = []
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(data_dir)):
    mocked = tfds.core.DatasetBuilder.download_and_prepare

    def download_and_prepare(builder, *args, **kwargs):
      calls.append((builder.name, str(builder.data_dir), kwargs.get("file_format")))
      mocked(builder, *args, **kwargs)
      builder.info.set_splits(tfds.core.SplitDict([
          tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0)
          for s, n in (("train", 50000), ("test", 10000))]))
      builder.data_path.mkdir(parents=True)
      builder.info.write_to_directory(builder.data_path)

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        download_and_prepare)
    config = dataset_config(data_dir=str(data_dir), validation_size=10)
    try:
      pipeline = data.InputPipeline(config, global_batch_size=10, seed=0, process_index=0,
                                    process_count=1)
      test = pipeline.eval_data("test")
    finally:
      server.shutdown()
      server.server_close()
  assert calls == [("cifar10", str(data_dir / "cifar10" / "3.0.2"), "array_record")]
  assert pipeline.train_batch(0)["image"].shape == (10, 32, 32, 3)
  assert test.image.shape == (60, 32, 32, 3)  # Read from the prepared folder: no 2nd download.
  assert tfds.builder("cifar10", data_dir=str(data_dir)).is_prepared()


@pytest.mark.parametrize("overrides, pattern", [
    (dict(download="yes"), r"dataset\.download .*True"),
    (dict(download_timeout=0.0), r"dataset\.download_timeout .*\(0, 300\]"),
    (dict(download_timeout=1e4), r"dataset\.download_timeout"),
])
def test_download_keys_are_checked(overrides, pattern):
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({**dataset_config().to_dict(), **overrides})
  with pytest.raises(config_errors.ConfigError, match=pattern):
    data.validate_dataset_config(config, training=False)
