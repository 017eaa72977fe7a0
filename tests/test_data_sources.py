"""Tests of siriib_jax.data's sources: TFDS through `tfds.data_source`, the Tiny-ImageNet builder,
`.npz` arrays, and downloading where the network answers."""

import io
import pathlib
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tests.helpers import register_prepared_cifar10
from siriib_jax import config_errors
from siriib_jax import data
from siriib_jax.data import prepare
from siriib_jax.data import tiny_imagenet
from tests.data_helpers import dataset_config, identifiable, ids, npz_pipeline


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
  check = ("import sys, siriib_jax.data, siriib_jax.training.step, siriib_jax.attacks;"
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
