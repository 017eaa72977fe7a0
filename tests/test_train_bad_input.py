"""Bad input gets one clear error before anything compiles, and loses no checkpoint."""

import hashlib
import os
import time

import jax
import ml_collections
import pytest

from tests.helpers import tiny_training_config, write_npz_dataset
from siriib_jax.configs import default
from siriib_jax import train as train_lib
from siriib_jax.checkpointing import CheckpointError, Checkpoints
from siriib_jax.config_errors import ConfigError
from siriib_jax.config_validation import check_known_keys
from siriib_jax.data import DatasetNotFoundError
from siriib_jax.models import create_model
from siriib_jax.training.state import create_train_state

# (key, bad value, a fragment the message must hold besides the key).
BAD_VALUES = [
    ("model.name", "resnet50", "must be one of"),
    ("model.siriib.num_skips", 4, "1, 2 or 3"),
    ("model.siriib.scales", (32, 64), "[1, 32]"),
    ("model.siriib.variant", "XXL", "must be one of"),
    ("model.mean", (0.5, 0.5), "3 values"),
    ("model.num_classes", 100, "dataset.num_classes"),
    ("model.width_multiplier", 0.0, "> 0"),
    ("dataset.name", "imagenet", "must be one of"),
    ("dataset.validation_size", -1, ">= 0"),
    ("dataset.extra_npz", "/nonexistent/extra.npz", "existing .npz"),
    ("strategy", "madry", "must be one of"),
    ("attack.eps", 0.0, "(0, 1]"),
    ("attack.eps", -8 / 255, "(0, 1]"),
    ("attack.step_size", 0.0, "(0, 1]"),
    ("attack.steps", 0, "≥ 1"),
    ("attack.batch_norm", "frozen", "must be one of"),
    ("batch_size", 0, "positive integer"),
    ("optimizer.learning_rate", -0.1, "> 0"),
    ("optimizer.momentum", 1.5, "[0, 1)"),
    ("optimizer.decay_epochs", (150, 100), "increasing"),
    ("optimizer.clip_global_norm", -1.0, "≥ 0"),
    ("num_epochs", 0, "≥ 1"),
    ("loss.lambda1", -1.0, "≥ 0"),
    ("trades_beta", 0.0, "> 0"),
    ("te_alpha", 1.0, "[0, 1)"),
    ("eval_pgd_steps", 0, "≥ 1"),
    ("dataset.extra_fraction", 1.5, "[0, 1)"),
    ("keep_checkpoints", 0, "≥ 1"),
    ("final_eval_attacks", ("clean", "pgd-20"), "'pgd-20' is not an attack"),
]


def _set(config, key, value):
  *parents, leaf = key.split(".")
  for parent in parents:
    config = config[parent]
  config[leaf] = value


def _snapshot(directory):
  """{relative path: sha256} of every file under `directory`."""
  digests = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digests


@pytest.fixture(scope="module")
def workdir_with_checkpoint(tmp_path_factory):
  """A run directory holding one good checkpoint (an initialised state, saved at step 7)."""
  root = tmp_path_factory.mktemp("bad_input")
  config = tiny_training_config(write_npz_dataset(root / "data"))
  model = create_model(config.model, 32)
  state = jax.jit(lambda key: create_train_state(model, config, key, (32, 32, 3), 3, 24))(
      jax.random.key(0))  # Jitted: one compile, not one per operation.
  checkpoints = Checkpoints(str(root / "run"), keep=3)
  checkpoints.save_last(7, state)
  checkpoints.close()
  return config, root / "run"


@pytest.mark.parametrize("key,value,fragment", BAD_VALUES)
def test_bad_value_fails_clearly_before_compiling_and_keeps_the_checkpoint(
    workdir_with_checkpoint, compile_events, key, value, fragment):
  good_config, workdir = workdir_with_checkpoint
  before = _snapshot(workdir)
  config = ml_collections.ConfigDict(good_config.to_dict())
  _set(config, key, value)
  with pytest.raises(ConfigError) as error:
    train_lib.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert f"config.{key}" in message and fragment in message, message
  assert not compile_events
  assert _snapshot(workdir) == before


def test_more_than_twenty_bad_inputs_are_covered():
  assert len(BAD_VALUES) >= 20


def test_unknown_key_is_named_with_a_suggestion():
  config = default.get_config()
  config.optimiser = ml_collections.ConfigDict({"learning_rate": 0.1})
  with pytest.raises(ConfigError, match=r"config\.optimiser .*did you mean config\.optimizer"):
    check_known_keys(config, default.get_config())
  config = default.get_config()
  config.attack.epsilon = 0.1
  with pytest.raises(ConfigError, match=r"config\.attack\.epsilon .*attack\.eps"):
    check_known_keys(config, default.get_config())
  check_known_keys(default.get_config(), default.get_config())


def test_missing_dataset_fails_within_seconds_naming_data_dir(tmp_path, compile_events):
  config = tiny_training_config(str(tmp_path))
  config.dataset.name = "cifar100"
  config.dataset.num_classes = config.model.num_classes = 100
  config.dataset.validation_size = 100
  config.dataset.data_dir = str(tmp_path / "empty")
  config.dataset.download = False  # Online, the main command would fetch CIFAR-100.
  start = time.time()
  with pytest.raises(DatasetNotFoundError, match="data_dir"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert time.time() - start < 30
  assert not compile_events


def test_corrupt_checkpoint_is_reported_and_left_in_place(workdir_with_checkpoint, tmp_path):
  good_config, workdir = workdir_with_checkpoint
  corrupt = tmp_path / "run"
  os.system(f"cp -r {workdir} {corrupt}")
  for root, _, files in os.walk(corrupt / "checkpoints" / "last" / "7"):
    for name in files:
      if name != "_CHECKPOINT_METADATA":
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  before = _snapshot(corrupt)
  with pytest.raises(CheckpointError, match="step 7.*left as it is"):
    train_lib.train_and_evaluate(ml_collections.ConfigDict(good_config.to_dict()),
                                 str(corrupt))
  assert _snapshot(corrupt) == before
