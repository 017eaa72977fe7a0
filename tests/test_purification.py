"""Grey-box purification (paper App. C.5, Table 8; issue 15 item 2):
`model.siriib.placement = "purifier"` trains the SR blocks alone with L_svd on the
backbone's own adversarial examples without touching the backbone, a checkpoint of the
other placement is refused, and `evaluation/purification.py`'s Table 8 is consistent."""

import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from siriib_jax import losses
from siriib_jax.checkpointing import CheckpointError, Checkpoints, load_variables
from siriib_jax.complexity import describe
from siriib_jax.config_errors import ConfigError
from siriib_jax.evaluation import evaluate_robustness
from siriib_jax.evaluation.purification import (predict_functions, purification_table,
                                                purify_images, to_markdown)
from siriib_jax.models.classifier import Classifier, create_model
from siriib_jax.models.siriib import SRBlock, SRPurifier
from siriib_jax.training.strategies import get_strategy
from siriib_jax.training.state import create_train_state
from siriib_jax.training.step import make_train_step
from tests.helpers import fast_evaluation

NUM_CLASSES = 4
IMAGE = (8, 8, 3)


class TinyBackbone(nn.Module):
  """BatchNorm then a dense layer, with the backbone interface of `Classifier` (no skip
  targets: only the purifier placement uses it)."""
  num_classes: int = NUM_CLASSES
  skip_targets: tuple = ()

  @nn.compact
  def __call__(self, x, skips=(), train: bool = False):
    del skips
    h = nn.BatchNorm(use_running_average=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(self.num_classes)(h)


def _tiny_purifier_model(purifier=True):
  return Classifier(TinyBackbone(), purifier=SRPurifier(scales=(8, 4)) if purifier else None)


def _configure(config, placement="purifier", enabled=True, strategy="pgd_at"):
  config.strategy = strategy
  config.model.siriib.enabled = enabled
  config.model.siriib.placement = placement
  config.model.num_classes = NUM_CLASSES
  config.attack.steps = 2
  config.attack.unroll = False
  return config


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.integers(0, 256, (n, *IMAGE), dtype=np.uint8)),
          "label": jnp.arange(n) % NUM_CLASSES, "index": jnp.arange(n)}


def _state_and_step(config, model, strategy=None):
  strategy = get_strategy(config) if strategy is None else strategy
  state = create_train_state(model, config, jax.random.key(0), IMAGE, steps_per_epoch=2,
                             num_train_examples=8, strategy=strategy)
  return state, jax.jit(make_train_step(model, strategy, config, steps_per_epoch=2))


def _assert_trees_close(a, b, **tolerance):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **tolerance), a, b)


def _changed(a, b) -> list:
  return [not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                      strict=True)]


# The model: the purifier is beside the backbone and feeds nothing.

def test_purifier_placement_keeps_the_backbone_tree_and_puts_sr_blocks_under_their_key(config):
  config.model.width_multiplier = 0.125
  x = jnp.zeros((1, 32, 32, 3))
  config.model.siriib.enabled = False
  plain = create_model(config.model, 32)
  config.model.siriib.enabled, config.model.siriib.placement = True, "purifier"
  purifier = create_model(config.model, 32)
  assert isinstance(purifier.purifier, SRPurifier) and purifier.siriib is None
  init = lambda model: jax.jit(model.init)(jax.random.key(3), x)
  plain_vars, purifier_vars = init(plain), init(purifier)
  assert set(purifier_vars["params"]) == {"backbone", "purifier"}
  # The SR blocks of every scale, and nothing of c(·) or the p_i.
  assert set(purifier_vars["params"]["purifier"]) == {f"sr{i}" for i in range(4)}
  # The backbone's tree is the plain backbone's, initialised to the same values.
  for name in ("params", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, purifier_vars[name]["backbone"],
                 plain_vars[name]["backbone"])
  # Its logits are the plain backbone's; x_avg comes out beside them.
  images = jax.random.uniform(jax.random.key(4), (2, 32, 32, 3))
  out = jax.jit(purifier.apply)(purifier_vars, images)
  np.testing.assert_allclose(out.logits, jax.jit(plain.apply)(plain_vars, images).logits,
                             rtol=1e-5, atol=1e-5)
  assert out.x_avg is None and out.features == () and out.purified.shape == images.shape
  assert "+SR-purifier" in describe(config)


def test_placement_is_checked_and_the_purifier_ignores_plugin_only_keys(config):
  config.model.siriib.placement = "purifer"
  with pytest.raises(ConfigError, match=r"model\.siriib\.placement.*did you mean 'purifier'"):
    create_model(config.model, 32)
  config.model.siriib.placement = "purifier"
  config.model.siriib.num_skips = 7  # c(·) and the p_i do not exist in this placement.
  assert create_model(config.model, 32).purifier is not None
  config.model.siriib.placement = "plugin"
  with pytest.raises(ConfigError, match=r"model\.siriib\.num_skips"):
    create_model(config.model, 32)


def test_the_gradient_of_l_svd_reaches_only_the_sr_blocks_and_l_ori_only_the_backbone():
  model = _tiny_purifier_model()
  x = jax.random.uniform(jax.random.key(0), (4, *IMAGE))
  x_adv = jnp.clip(x + 0.03 * jax.random.normal(jax.random.key(1), x.shape), 0, 1)
  variables = jax.jit(model.init)(jax.random.key(2), x)

  def part_losses(params):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x_adv,
                         train=True, mutable=["batch_stats"])
    return (jnp.mean(losses.svd_loss(out.purified, x)),
            jnp.mean(losses.cross_entropy(out.logits, jnp.arange(4) % NUM_CLASSES)))

  svd_grads = jax.jit(jax.grad(lambda p: part_losses(p)[0]))(variables["params"])
  ce_grads = jax.jit(jax.grad(lambda p: part_losses(p)[1]))(variables["params"])
  for leaf in jax.tree.leaves(svd_grads["backbone"]) + jax.tree.leaves(ce_grads["purifier"]):
    assert np.all(np.asarray(leaf) == 0.0)
  # Every SR leaf that L_svd depends on gets a non-zero gradient, and every backbone leaf
  # one from L_ori: the zeros above are the structure's, not a dead model's.
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(svd_grads["purifier"]))
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(ce_grads["backbone"]))


# The train step.

@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_the_purifier_step_moves_the_backbone_exactly_as_the_plain_backbones_step(config,
                                                                                  clip):
  # clip 1e-3 is far below the gradients' norm: a shared global-norm clip would scale the
  # backbone's update by the purifier's gradient; each part has its own optimiser copy.
  config.optimizer.clip_global_norm = clip
  plain_config = _configure(ml_collections.ConfigDict(config.to_dict()), enabled=False)
  purifier_config = _configure(config)
  plain_state, plain_step = _state_and_step(plain_config, _tiny_purifier_model(False))
  start, step = _state_and_step(purifier_config, _tiny_purifier_model())
  jax.tree.map(np.testing.assert_array_equal, start.params["backbone"],
               plain_state.params["backbone"])
  batch, state = _batch(), start
  for i in range(2):  # Two steps: momentum and the optimiser states carry over.
    plain_state, _ = plain_step(plain_state, batch, jax.random.key(i))
    new, metrics = step(state, batch, jax.random.key(i))
    assert float(metrics["finite"]) == 1.0 and float(metrics["svd_loss"]) > 0
    assert all(_changed(new.params["purifier"], state.params["purifier"]))
    state = new
  assert all(_changed(state.params["backbone"], start.params["backbone"]))
  _assert_trees_close(state.params["backbone"], plain_state.params["backbone"],
                      rtol=1e-6, atol=1e-7)
  _assert_trees_close(state.batch_stats["backbone"], plain_state.batch_stats["backbone"],
                      rtol=1e-6, atol=1e-7)
  # The SR blocks' running statistics follow the batches they see.
  assert all(_changed(state.batch_stats["purifier"], start.batch_stats["purifier"]))


def test_with_the_classifier_loss_off_a_step_changes_only_the_sr_blocks(config):
  config = _configure(config)
  config.optimizer.weight_decay = 0.0  # Else the decay alone moves every parameter.
  strategy = get_strategy(config)
  silent = dataclasses.replace(strategy, loss=lambda adv, clean, y: 0.0 * losses.cross_entropy(
      adv, y))
  model = _tiny_purifier_model()
  state, step = _state_and_step(config, model, silent)
  new, metrics = step(state, _batch(), jax.random.key(1))
  assert float(metrics["finite"]) == 1.0 and float(metrics["loss_ori"]) == 0.0
  jax.tree.map(np.testing.assert_array_equal, new.params["backbone"], state.params["backbone"])
  assert all(_changed(new.params["purifier"], state.params["purifier"]))
  # The control: with the classifier loss on, the same step moves the backbone.
  state, step = _state_and_step(config, model)
  moved, _ = step(state, _batch(), jax.random.key(1))
  assert all(_changed(moved.params["backbone"], state.params["backbone"]))


def test_the_purifier_step_fits_x_avg_to_the_clean_images(config):
  config = _configure(config)
  config.optimizer.learning_rate = 0.5
  state, step = _state_and_step(config, _tiny_purifier_model())
  batch = _batch()
  first = None
  for i in range(25):
    state, metrics = step(state, batch, jax.random.key(i))
    first = float(metrics["svd_loss"]) if first is None else first
  assert float(metrics["svd_loss"]) < 0.7 * first, (first, float(metrics["svd_loss"]))


# Checkpoints.

@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


def _state_of(placement):
  """A train state's variables with SR blocks under the placement's key."""
  variables = SRBlock().init(jax.random.key(0), jnp.zeros((1, *IMAGE)), train=False)
  key = {"plugin": "siriib", "purifier": "purifier"}[placement]
  backbone = {"head": {"kernel": np.ones((4, 2), np.float32)}}
  return _State({"backbone": backbone, key: {"sr0": variables["params"]}},
                {key: {"sr0": variables["batch_stats"]}})


@pytest.mark.parametrize("saved,configured", [("plugin", "purifier"), ("purifier", "plugin")])
def test_a_checkpoint_of_the_other_placement_is_refused_clearly(tmp_path, saved, configured):
  checkpoints = Checkpoints(str(tmp_path), keep=1)
  checkpoints.save_last(1, _state_of(saved))
  checkpoints.close()
  expected = _state_of(configured)
  abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
  checkpoints = Checkpoints(str(tmp_path), keep=1)
  same = checkpoints.restore_latest(abstract(_state_of(saved)))  # The control.
  jax.tree.map(np.testing.assert_array_equal, same.params, _state_of(saved).params)
  hint = (rf"holds the SR blocks as model\.siriib\.placement='{saved}', .* as "
          rf"'{configured}': set --config\.model\.siriib\.placement={saved}")
  with pytest.raises(CheckpointError, match=hint):
    checkpoints.restore_latest(abstract(expected))
  checkpoints.close()
  with pytest.raises(CheckpointError, match=hint):
    load_variables(str(tmp_path), "last", expected={"params": expected.params,
                                                    "batch_stats": expected.batch_stats})


# Table 8.

class ConstantPurifier(nn.Module):
  """x_avg = a fixed grey image whatever x: every x_avg column is the backbone's accuracy
  on that one image."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    level = self.param("level", nn.initializers.constant(0.5), ())
    return jnp.zeros_like(x) + level


class IdentityPurifier(nn.Module):
  """x_avg = x (one unused parameter, so that the variables hold a `purifier` entry)."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return x + 0.0 * self.param("unused", nn.initializers.zeros, ())


def _table_problem(purifier):
  model = Classifier(TinyBackbone(num_classes=10), purifier=purifier)
  x = np.random.default_rng(0).uniform(0.2, 0.8, (24, *IMAGE)).astype(np.float32)
  variables = model.init(jax.random.key(0), x[:1])
  backbone_fn, _ = predict_functions(model, variables)
  y = np.array(jnp.argmax(backbone_fn(x), -1))
  y[:3] = (y[:3] + 1) % 10  # Three clean errors.
  return model, variables, x, y


def _evaluation(config, eps=0.004):
  """Fast settings; ε 0.004 is between the critical ε of about a third and two thirds of
  `_table_problem`'s points (its backbone is affine in inference mode)."""
  fast_evaluation(config)
  config.evaluation.linf.eps, config.evaluation.linf.step_size = eps, eps / 4
  config.evaluation.batch_size = 16  # Two batches of the 24 points, the last padded.
  return config.evaluation


def test_table8_x_adv_column_is_the_attacks_own_robust_accuracy_against_the_backbone(config):
  # A constant purifier: attacking "purifier then backbone" instead of the backbone alone
  # would break nothing (its gradient is 0), and the counts below would differ.
  model, variables, x, y = _table_problem(ConstantPurifier())
  evaluation = _evaluation(config)
  table = purification_table(model, variables, evaluation, (x, y), attacks=("pgd10",))
  row = table["attacks"][0]
  assert table["num_points"] == 24 and table["clean"]["correct_x"] == 21
  assert 0 < row["correct_adv"] < 21  # The attack breaks some points, not all.
  assert row["accuracy_adv"] == row["robust_accuracy"]
  # The same attack run by the robustness evaluation on the classifier, whose logits are
  # the backbone's alone: the same robust accuracy.
  config.evaluation.checklist.large_eps = 0.0
  report = evaluate_robustness(model, variables, config, (x, y), attacks=("clean", "pgd10"))
  assert {r.name: r.robust for r in report.rows} == {"clean": 21, "pgd10": row["correct_adv"]}
  assert "| x or x_adv |" in to_markdown(table) and "PGD-10" in to_markdown(table)
  assert to_markdown(table).startswith("### Table 8.")
  assert "Table 8" not in to_markdown(table, heading=None).splitlines()[0]  # Caller's own.


def test_table8_with_an_identity_purifier_has_equal_columns(config):
  model, variables, x, y = _table_problem(IdentityPurifier())
  table = purification_table(model, variables, _evaluation(config), (x, y),
                             attacks=("pgd10",))
  assert table["clean"]["accuracy_x_avg"] == table["clean"]["accuracy_x"] == 21 / 24
  for row in table["attacks"]:
    assert row["accuracy_purified"] == row["accuracy_adv"] < 21 / 24
    assert row["recovered"] == row["lost"] == 0 and row["mean_linf_change"] == 0.0


def test_table8_x_avg_columns_classify_the_purifiers_output(config):
  model, variables, x, y = _table_problem(ConstantPurifier())
  backbone_fn, purified_fn = predict_functions(model, variables)
  grey_class = int(jnp.argmax(backbone_fn(jnp.full((1, *IMAGE), 0.5))[0]))
  expected = float(np.mean(y == grey_class))
  table = purification_table(model, variables, _evaluation(config), (x, y),
                             attacks=("pgd10",))
  assert table["clean"]["accuracy_x_avg"] == expected
  assert table["attacks"][0]["accuracy_purified"] == expected
  np.testing.assert_allclose(purify_images(model, variables, x, batch_size=16), 0.5)
  np.testing.assert_array_equal(np.argmax(purified_fn(x), -1), grey_class)


def test_table8_refuses_a_model_without_purifier_and_the_special_names(config):
  model, variables, x, y = _table_problem(IdentityPurifier())
  with pytest.raises(ValueError, match="clean"):
    purification_table(model, variables, _evaluation(config), (x, y), attacks=("clean",))
  plain = Classifier(TinyBackbone(num_classes=10))
  with pytest.raises(ValueError, match="placement='purifier'"):
    predict_functions(plain, plain.init(jax.random.key(0), x[:1]))


def test_table8_refuses_0_255_floats_and_counts_every_class(config):
  model, variables, x, y = _table_problem(IdentityPurifier())
  evaluation = _evaluation(config)
  with pytest.raises(ValueError, match="data's images holds values in .*0–255"):
    purification_table(model, variables, evaluation, (x * 255, y), attacks=())
  with pytest.raises(ValueError, match="^images holds values in"):
    purify_images(model, variables, x * 255)
  evaluation.linf.eps = 8.0
  with pytest.raises(ConfigError, match=r"evaluation\.linf\.eps.*8/255"):
    purification_table(model, variables, evaluation, (x, y), attacks=("pgd10",))
  evaluation.linf.eps = 0.004
  few = y % 5  # A 10-class backbone, classes 5–9 empty.
  table = purification_table(model, variables, evaluation, (x, few), attacks=())
  assert table["class_counts"] == np.bincount(few, minlength=10).tolist()
  assert len(table["class_counts"]) == 10


@pytest.mark.slow
def test_a_purifier_run_trains_checkpoints_and_evaluates(tmp_path):
  from siriib_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  from tests.helpers import tiny_training_config, write_npz_dataset  # pylint: disable=g-import-not-at-top
  config = tiny_training_config(write_npz_dataset(tmp_path / "data"))
  config.model.siriib.placement = "purifier"
  config.final_eval_size = 10
  config.final_eval_attacks = ("clean", "pgd20")
  config.evaluation.checklist.large_eps = 0.0
  summary = train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["status"] == "completed" and summary["step"] == 6
  assert summary["orthogonality_error"] < 1e-4
  rows = {r["name"]: r["accuracy"] for r in summary["final_evaluation"]["rows"]}
  assert set(rows) == {"clean", "pgd20"}
  model = create_model(config.model, 32)
  expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  variables, _ = load_variables(str(tmp_path / "run"), "last", expected=expected)
  table = purification_table(model, variables, fast_evaluation(config).evaluation,
                             (np.random.default_rng(0).uniform(size=(6, 32, 32, 3)),
                              np.arange(6)), attacks=("pgd10",))
  assert table["num_points"] == 6
  # A plug-in config cannot read the purifier run.
  config.model.siriib.placement = "plugin"
  plugin = create_model(config.model, 32)
  with pytest.raises(CheckpointError, match="placement='purifier'"):
    load_variables(str(tmp_path / "run"), "last", expected=jax.eval_shape(
        plugin.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
