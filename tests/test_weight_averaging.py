"""Weight averaging (docs/weight_averaging.md): the average and its warm-up, resume, the
weights that validation, selection, the final evaluation, --mode=eval / export / paper use,
and resuming a checkpoint written without averaging."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_training_config, write_npz_dataset
from siriib_jax import evaluate as evaluate_lib
from siriib_jax import export as export_lib
from siriib_jax import losses
from siriib_jax import paper as paper_lib
from siriib_jax import train as train_lib
from siriib_jax.checkpointing import CheckpointError, load_variables
from siriib_jax.config_errors import ConfigError
from siriib_jax.config_validation import validate_config
from siriib_jax.configs import default
from siriib_jax.data import InputPipeline
from siriib_jax.models import create_model
from siriib_jax.training.strategies import STRATEGY_NAMES, get_strategy
from siriib_jax.training.state import averaging_decay, create_train_state, evaluated_variables
from siriib_jax.training.step import make_eval_step, make_train_step

DECAY = 0.5  # Far from 1, so that a few steps' average differs clearly from the weights.


@pytest.fixture(scope="module")
def npz_dir(tmp_path_factory):
  return write_npz_dataset(tmp_path_factory.mktemp("data"))


def _config(npz_dir, decay=DECAY):
  config = tiny_training_config(npz_dir)  # 24 training examples: 3 steps per epoch.
  config.weight_averaging.decay = decay
  return config


def _run(config, workdir, **overrides):
  for key, value in overrides.items():
    config[key] = value
  return train_lib.train_and_evaluate(config, str(workdir))


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _trees_differ(a, b) -> bool:
  return any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_off_in_every_shipped_config():
  import importlib  # pylint: disable=g-import-not-at-top
  names = [f[:-3] for f in os.listdir(os.path.dirname(default.__file__))
           if f.endswith(".py") and f != "__init__.py"]
  assert "cifar10_r18" in names
  for name in names:
    config = importlib.import_module(f"siriib_jax.configs.{name}").get_config()
    assert config.weight_averaging.decay == 0, name


@pytest.mark.parametrize("key,value", [("decay", 1.0), ("decay", -0.1), ("decay", True),
                                       ("warmup_steps", -1)])
def test_bad_keys_are_refused_naming_them(config, key, value):
  config.weight_averaging[key] = value
  with pytest.raises(ConfigError, match=f"weight_averaging.{key}"):
    validate_config(config)


def test_decay_schedule_is_the_tensorflow_warm_up_after_warmup_steps(config):
  config.weight_averaging.decay = 0.995
  config.weight_averaging.warmup_steps = 2
  d = [float(averaging_decay(jnp.int32(t), config)) for t in range(6)]
  np.testing.assert_allclose(d, [0, 0, 1 / 10, 2 / 11, 3 / 12, 4 / 13], rtol=1e-6)
  assert float(averaging_decay(jnp.int32(10 ** 6), config)) == pytest.approx(0.995)
  config.weight_averaging.dynamic_decay = False
  assert float(averaging_decay(jnp.int32(2), config)) == pytest.approx(0.995)
  assert float(averaging_decay(jnp.int32(1), config)) == 0.0


def test_average_over_steps_equals_the_hand_computed_one(npz_dir):
  # AWP: the average must follow the real weights, never the perturbed copy the gradient
  # is taken at.
  config = _config(npz_dir, decay=0.9)
  config.weight_averaging.warmup_steps = 1
  config.strategy = "awp_pgd_at"
  config.model.siriib.enabled = False  # A faster compile; the average is model-agnostic.
  model = create_model(config.model, 32)
  strategy = get_strategy(config)
  state = jax.jit(lambda key: create_train_state(model, config, key, (32, 32, 3), 3, 24,
                                                 strategy))(jax.random.key(0))
  _assert_trees_equal(state.averaged_params, state.params)  # Starts at the initial weights.
  step = jax.jit(make_train_step(model, strategy, config, 3))
  data = InputPipeline(config.dataset, global_batch_size=8, seed=0)
  expected = jax.tree.map(np.asarray, state.params)
  decays = []
  for t in range(4):
    state, metrics = step(state, data.train_batch(t), jax.random.key(1))
    assert float(metrics["finite"]) == 1.0
    # warmup_steps = 1: d = 0 at t = 0 (a copy), then min(0.9, (1 + s) / (10 + s)), s = t − 1.
    d = 0.0 if t < 1 else min(0.9, (1 + (t - 1)) / (10 + (t - 1)))
    decays.append(d)
    expected = jax.tree.map(lambda avg, p: d * avg + (1 - d) * np.asarray(p), expected,
                            state.params)
  assert decays == [0.0, 0.1, 2 / 11, 3 / 12]
  for x, y in zip(jax.tree.leaves(state.averaged_params), jax.tree.leaves(expected),
                  strict=True):
    np.testing.assert_allclose(np.asarray(x), y, rtol=1e-5, atol=1e-7)
  assert _trees_differ(state.averaged_params, state.params)


@pytest.mark.slow  # One compile per strategy (the fast suite covers AWP above).
@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_one_averaged_step_of_each_strategy(npz_dir, strategy):
  config = _config(npz_dir)
  config.strategy = strategy
  config.model.siriib.enabled = False
  model = create_model(config.model, 32)
  state = create_train_state(model, config, jax.random.key(0), (32, 32, 3), 3, 24)
  data = InputPipeline(config.dataset, global_batch_size=8, seed=0)
  step = jax.jit(make_train_step(model, get_strategy(config), config, 3))
  new, metrics = step(state, data.train_batch(0), jax.random.key(1))
  assert float(metrics["finite"]) == 1.0
  for avg, p0, p1 in zip(jax.tree.leaves(new.averaged_params), jax.tree.leaves(state.params),
                         jax.tree.leaves(new.params), strict=True):  # d(0) = 0.1.
    np.testing.assert_allclose(avg, 0.1 * np.asarray(p0) + 0.9 * np.asarray(p1), rtol=1e-5,
                               atol=1e-7)


def test_validation_uses_the_average_when_on_and_the_weights_when_off(npz_dir):
  config = _config(npz_dir)
  config.model.siriib.enabled = False  # A faster compile; the choice is model-agnostic.
  model = create_model(config.model, 32)
  state = create_train_state(model, config, jax.random.key(0), (32, 32, 3), 3, 24)
  zeroed = jax.tree_util.tree_map_with_path(  # A zero head: a model that predicts class 0.
      lambda path, p: jnp.zeros_like(p) if "head" in jax.tree_util.keystr(path) else p,
      state.params)
  state = state.replace(averaged_params=zeroed)
  eval_step = jax.jit(make_eval_step(model, config))
  x = np.random.RandomState(0).randint(0, 256, (8, 32, 32, 3)).astype(np.uint8)
  batch = {"image": x, "label": np.arange(8) % 2, "mask": np.ones(8, bool)}
  key = jax.random.key(3)
  with_average = jax.device_get(eval_step(state, batch, key))
  as_weights = jax.device_get(eval_step(state.replace(params=zeroed, averaged_params=None),
                                        batch, key))
  assert with_average == as_weights
  assert with_average["clean"] == 4  # Class 0 for all: the four labels 0.
  raw = jax.device_get(eval_step(state.replace(averaged_params=None), batch, key))
  assert evaluated_variables(state.replace(averaged_params=None))["params"] is state.params
  assert raw == jax.device_get(eval_step(state.replace(averaged_params=state.params), batch,
                                         key))


@pytest.fixture(scope="module")
def averaged_run(npz_dir, tmp_path_factory):
  """A run with averaging on: 1 epoch (3 steps), validation, a final evaluation on 10
  points (clean only); the variables the final evaluation received."""
  workdir = tmp_path_factory.mktemp("averaged") / "run"
  config = _config(npz_dir)
  config.final_eval_size = 10
  config.final_eval_attacks = ("clean",)
  config.evaluation.checklist.large_eps = 0.0
  seen = {}
  original = train_lib.evaluate_robustness

  def recording(model, variables, *args, **kwargs):
    seen["variables"] = variables
    return original(model, variables, *args, **kwargs)

  train_lib.evaluate_robustness = recording
  try:
    summary = _run(config, workdir, max_steps=3)
  finally:
    train_lib.evaluate_robustness = original
  return config, workdir, summary, seen["variables"]


def test_selected_and_finally_evaluated_weights_are_the_average(averaged_run):
  config, workdir, summary, evaluated = averaged_run
  assert summary["weights"] == "averaged"
  assert summary["final_evaluation"]["meta"]["weights"] == "averaged"
  with open(workdir / "summary.json") as f:
    assert json.load(f)["weights"] == "averaged"
  best, step = load_variables(str(workdir), "best", averaged=True)
  raw, _ = load_variables(str(workdir), "best")
  assert step == 3 and _trees_differ(best["params"], raw["params"])
  _assert_trees_equal(evaluated["params"], best["params"])
  _assert_trees_equal(evaluated["batch_stats"], raw["batch_stats"])  # The raw statistics.
  # SiRIIB's exact W of the averaged A still has orthonormal rows.
  assert summary["orthogonality_error"] < 1e-5
  assert float(losses.orthogonality_error(best["params"])) < 1e-5


def _capture_eval(monkeypatch):
  seen = {}

  def capture(model, variables, config, data, **kwargs):
    seen.update(variables=variables, meta=kwargs["meta"])
    return "report"

  monkeypatch.setattr(evaluate_lib, "evaluate_robustness", capture)
  return seen


@pytest.mark.parametrize("on", [True, False])
def test_eval_export_and_paper_read_the_weights_the_config_names(averaged_run, monkeypatch,
                                                                 on):
  config, workdir, _, _ = averaged_run
  config = config.copy_and_resolve_references()
  config.weight_averaging.decay = DECAY if on else 0.0
  config.evaluation.checkpoint = "last"
  wanted, _ = load_variables(str(workdir), "last", averaged=on)
  other, _ = load_variables(str(workdir), "last", averaged=not on)
  assert _trees_differ(wanted["params"], other["params"])

  seen = _capture_eval(monkeypatch)
  evaluate_lib.evaluate("eval", config, str(workdir))
  _assert_trees_equal(seen["variables"], wanted)
  assert seen["meta"]["weights"] == ("averaged" if on else "raw")

  paths = export_lib.run(config, str(workdir))
  with open(paths["architecture"]) as f:
    assert json.load(f)["weights"] == ("averaged" if on else "raw")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  exported = load_file(paths["weights"])
  head = wanted["params"]["backbone"]["head"]["kernel"]
  np.testing.assert_array_equal(exported["backbone.head.weight"], np.asarray(head).T)

  run = paper_lib.load_run(str(workdir), config)
  assert run.weights == ("averaged" if on else "raw")
  _assert_trees_equal(run.variables, wanted)


def test_paper_reads_a_run_by_its_own_config(averaged_run):
  _, workdir, _, _ = averaged_run
  run = paper_lib.load_run(str(workdir))  # config.json: averaging on.
  assert run.weights == "averaged"
  averaged, _ = load_variables(str(workdir), run.config.evaluation.checkpoint, averaged=True)
  _assert_trees_equal(run.variables, averaged)


def test_killed_and_resumed_run_with_averaging_is_bit_identical(npz_dir, tmp_path,
                                                                monkeypatch):
  config = _config(npz_dir)  # The averaged_run fixture's step: compiled once.
  straight = _run(config, tmp_path / "straight", max_steps=5)
  assert straight["status"] == "completed"
  original = InputPipeline.train_batch

  def preempt_at_step_1(self, step):
    if step == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, step)

  monkeypatch.setattr(InputPipeline, "train_batch", preempt_at_step_1)
  killed = _run(config, tmp_path / "resumed", max_steps=5)
  assert killed["status"] == "preempted" and killed["step"] == 2
  monkeypatch.setattr(InputPipeline, "train_batch", original)
  resumed = _run(config, tmp_path / "resumed", max_steps=5)
  assert resumed["status"] == "completed" and resumed["step"] == 5
  for averaged in (True, False):
    a, _ = load_variables(str(tmp_path / "straight"), "last", averaged=averaged)
    b, _ = load_variables(str(tmp_path / "resumed"), "last", averaged=averaged)
    _assert_trees_equal(a, b)


def test_a_run_without_averaging_resumes_with_it_starting_at_its_weights(npz_dir, tmp_path):
  workdir = tmp_path / "run"
  config = _config(npz_dir, decay=0.0)
  _run(config, workdir, max_steps=3)
  before, _ = load_variables(str(workdir), "last")
  with pytest.raises(CheckpointError, match="weight_averaging.decay"):
    load_variables(str(workdir), "last", averaged=True)

  config = _config(npz_dir)
  summary = _run(config, workdir, max_steps=4)
  assert summary["status"] == "completed" and summary["step"] == 4
  raw, _ = load_variables(str(workdir), "last")
  averaged, _ = load_variables(str(workdir), "last", averaged=True)
  # The average started at step 3's weights, then took one update with d(3).
  d = float(averaging_decay(jnp.int32(3), config))
  assert d == pytest.approx(min(DECAY, 4 / 13))
  for x, p0, p1 in zip(jax.tree.leaves(averaged["params"]), jax.tree.leaves(before["params"]),
                       jax.tree.leaves(raw["params"]), strict=True):
    np.testing.assert_allclose(np.asarray(x), d * np.asarray(p0) + (1 - d) * np.asarray(p1),
                               rtol=1e-5, atol=1e-7)

  # And back: a checkpoint with an average is refused with averaging off, naming the key.
  with pytest.raises(CheckpointError, match="weight_averaging.decay"):
    _run(_config(npz_dir, decay=0.0), workdir, max_steps=5)
