"""siriib_jax/run_config.py: a run's config round-trips through its workdir."""

import json
import os

import pytest

from siriib_jax import run_config
from siriib_jax.configs import default, quickstart


def test_a_saved_config_loads_back_equal_with_its_tuples(tmp_path):
  config = quickstart.get_config()
  config.model.siriib.scales = (32, 16)
  config.loss.lambda1 = 3.0
  config.evaluation.attacks = ("clean", "pgd20")
  run_config.save(config, str(tmp_path))
  loaded = run_config.load(str(tmp_path), default.get_config())
  assert loaded.to_dict() == config.to_dict()
  assert isinstance(loaded.model.siriib.scales, tuple)
  assert isinstance(loaded.optimizer.decay_epochs, tuple)


def test_keys_missing_from_an_older_file_keep_their_defaults(tmp_path):
  run_config.save(quickstart.get_config(), str(tmp_path))
  path = tmp_path / run_config.FILENAME
  values = json.loads(path.read_text())
  del values["evaluation"]["square_queries"]
  values["loss"]["lambda1"] = 5.0
  path.write_text(json.dumps(values))
  loaded = run_config.load(str(tmp_path), default.get_config())
  assert loaded.evaluation.square_queries == default.get_config().evaluation.square_queries
  assert loaded.loss.lambda1 == 5.0


def test_a_workdir_without_a_config_names_the_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=os.path.join(str(tmp_path), "config.json")):
    run_config.load(str(tmp_path), default.get_config())
