"""attacks/threat_model: ε and step sizes in [0, 1] pixel units and images in [0, 1] are
checked at every factory, config check and entry point before anything runs; per-class
counts have one entry per class of the model (docs/evaluation.md, "What the evaluation
refuses, and why")."""

import math

import jax
import numpy as np
import pytest

from siriib_jax import attacks
from siriib_jax.analysis.features import penultimate_features
from siriib_jax.analysis.scorecam import score_cam
from siriib_jax.analysis.xavg import adversarial_rows, x_avg
from siriib_jax.attacks.runner import attack_points
from siriib_jax.attacks.threat_model import (check_attack, check_images, check_radius,
                                             check_step_size)
from siriib_jax.config_errors import ConfigError
from siriib_jax.config_validation import validate_config, validate_evaluation_config
from siriib_jax.evaluate import evaluate
from siriib_jax.evaluation import evaluate_robustness, svd_study
from siriib_jax.evaluation.batching import run_attack
from siriib_jax.evaluation.adaptive import adaptive_pgd
from siriib_jax.evaluation.attack_specs import parse_spec
from siriib_jax.models import logits_fn
from siriib_jax.paper import _validate_paper_config
from siriib_jax.training.strategies import get_strategy
from tests.helpers import LinearClassifier, fast_evaluation, self_labelled_points, tiny_model

CAUSES = ("0–255", "config.model.mean")  # The two usual causes every image error names.


# The checks themselves.

@pytest.mark.parametrize("value", [0.0, 8 / 255, 1.0, np.float32(0.5), np.asarray(0.1)])
def test_linf_radii_and_steps_in_the_unit_interval_pass(value):
  check_radius(value, "linf", "eps")
  check_step_size(value, "linf", "step_size")


@pytest.mark.parametrize("value,says", [(8, "write 8/255, not 8"), (8.0, "write 8/255, not 8"),
                                        (64.0, "write 64/255"), (1000.0, "at most 1"),
                                        (-8 / 255, "≥ 0"), (math.nan, "finite"),
                                        (math.inf, "finite"), ("8/255", "a number"),
                                        (True, "a number")])
def test_a_linf_radius_or_step_outside_the_unit_interval_is_refused_naming_the_argument(value,
                                                                                        says):
  with pytest.raises(ValueError, match="eps = .*pixel units") as error:
    check_radius(value, "linf", "eps")
  assert says in str(error.value)
  with pytest.raises(ValueError, match="alpha = .*pixel units") as error:
    check_step_size(value, "linf", "alpha")
  assert says in str(error.value)


def test_l2_radii_are_legal_up_to_the_diameter_of_the_image_box():
  check_radius(2.0, "l2", "eps")  # Above 1 is an L2 radius like any other.
  check_radius(100.0, "l2", "eps")  # Shape unknown: only negatives are refused.
  check_radius(math.sqrt(32 * 32 * 3), "l2", "eps", shape=(32, 32, 3))
  with pytest.raises(ValueError, match=r"eps = 56.0 .*√3072 = 55.43"):
    check_radius(56.0, "l2", "eps", shape=(32, 32, 3))
  with pytest.raises(ValueError, match="≥ 0"):
    check_radius(-0.5, "l2", "eps")
  check_step_size(5.0, "l2", "step_size")
  with pytest.raises(ValueError, match="step_size = -0.1"):
    check_step_size(-0.1, "l2", "step_size")


def test_a_traced_radius_is_left_to_the_caller():
  jax.jit(lambda e: check_attack(e, "linf", e) or e)(8.0)  # No concrete value to check.


def test_images_in_the_unit_interval_pass_and_uint8_is_divided_by_255():
  x = np.random.default_rng(0).uniform(0, 1, (2, 4, 4, 3))
  np.testing.assert_array_equal(check_images(x, "x"), x.astype(np.float32))
  assert check_images(x, "x").dtype == np.float32
  pixels = np.array([[[[0, 128, 255]]]], np.uint8)
  np.testing.assert_allclose(check_images(pixels, "x"), pixels / 255.0)
  # Float rounding within the tolerance (1e-6) passes unchanged.
  check_images(np.array([-1e-7, 1 + 1e-7], np.float32), "x")
  assert check_images(np.zeros((0, 4, 4, 3)), "x").shape == (0, 4, 4, 3)


@pytest.mark.parametrize("images", [
    np.full((2, 4, 4, 3), 200.0),  # 0–255 floats.
    (np.full((2, 4, 4, 3), 0.1) - 0.4914) / 0.2471,  # Normalised outside the model.
    np.full((2, 4, 4, 3), 1 + 1e-4)])
def test_images_outside_the_unit_interval_are_refused_naming_the_argument_and_the_causes(images):
  with pytest.raises(ValueError, match=r"^images holds values in \[") as error:
    check_images(images, "images")
  for cause in CAUSES:
    assert cause in str(error.value)


def test_non_finite_images_are_refused():
  x = np.full((2, 4, 4, 3), 0.5, np.float32)
  x[1, 0, 0, 0], x[0, 1, 1, 1] = np.nan, np.inf
  with pytest.raises(ValueError, match="x has 2 non-finite entries"):
    check_images(x, "x")


# Every attack factory refuses ε in the wrong units.

FACTORIES = {
    "pgd": lambda eps: attacks.pgd(eps, 2 / 255, 10),
    "pgd step": lambda eps: attacks.pgd(8 / 255, eps, 10),
    "fgsm": lambda eps: attacks.fgsm(eps),
    "apgd": lambda eps: attacks.apgd(eps),
    "apgd_targeted": lambda eps: attacks.apgd_targeted(eps),
    "fab_targeted": lambda eps: attacks.fab_targeted(eps),
    "square": lambda eps: attacks.square(eps),
    "autoattack": lambda eps: attacks.autoattack(eps),
    "AutoAttack": lambda eps: attacks.AutoAttack(eps, attacks={}),
    "get_attack pgd20": lambda eps: attacks.get_attack("pgd20", eps),
    "get_attack step": lambda eps: attacks.get_attack("pgd20", 8 / 255, step_size=eps),
    "get_attack autoattack": lambda eps: attacks.get_attack("autoattack", eps),
    "adaptive_pgd": lambda eps: adaptive_pgd(eps, 2 / 255, 20),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_every_attack_factory_refuses_8_for_8_over_255(name):
  with pytest.raises(ValueError, match="write 8/255, not 8"):
    FACTORIES[name](8.0)
  with pytest.raises(ValueError, match="≥ 0"):
    FACTORIES[name](-0.1)
  FACTORIES[name](8 / 255)


def test_an_l2_radius_above_one_still_builds():
  attacks.get_attack("pgd20", 2.0, "l2")
  attacks.apgd(2.0, "l2")


# The config check refuses them before anything is read or compiled.

@pytest.mark.parametrize("key,value", [
    ("evaluation.linf.eps", 8.0), ("evaluation.linf.step_size", 2.0),
    ("evaluation.checklist.large_eps", 64.0), ("evaluation.linf.eps", -8 / 255),
    ("evaluation.l2.eps", 60.0), ("evaluation.l2.step_size", -0.1)])
def test_the_evaluation_config_refuses_a_radius_in_the_wrong_units(config, key, value):
  node = config
  for part in key.split(".")[:-1]:
    node = node[part]
  node[key.split(".")[-1]] = value
  for validate in (validate_evaluation_config, validate_config):
    with pytest.raises(ConfigError, match=rf"config\.{key} = ") as error:
      validate(config)
    if "linf" in key or "large_eps" in key:
      assert "/255" in str(error.value)


def test_the_l2_radius_is_bounded_by_the_configured_image_size(config):
  config.evaluation.l2.eps = 50.0  # < √(32·32·3) = 55.4: legal, if unusual.
  validate_evaluation_config(config)
  config.dataset.image_size = 8  # √(8·8·3) = 13.9.
  with pytest.raises(ConfigError, match=r"evaluation\.l2\.eps.*√192"):
    validate_evaluation_config(config)


def test_eval_mode_refuses_8_before_reading_the_checkpoint(config, tmp_path):
  config.evaluation.linf.eps = 8.0
  with pytest.raises(ConfigError, match=r"evaluation\.linf\.eps = 8\.0.*8/255"):
    evaluate("eval", config, str(tmp_path / "no-such-run"))  # No CheckpointError first.


def test_the_paper_and_every_attack_spec_refuse_8(config):
  config.evaluation.linf.eps = 8.0
  with pytest.raises(ConfigError, match=r"evaluation\.linf\.eps.*8/255"):
    _validate_paper_config(config)
  with pytest.raises(ConfigError, match=r"evaluation\.linf\.eps"):
    parse_spec("pgd20", config.evaluation)  # svd_study's and purification's attacks.
  config.evaluation.linf.eps, config.evaluation.l2.step_size = 8 / 255, -1.0
  with pytest.raises(ConfigError, match=r"evaluation\.l2\.step_size"):
    parse_spec("l2-pgd20", config.evaluation)


def test_evaluate_robustness_refuses_8_before_anything_runs(config):
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=4)
  config.evaluation.checklist.large_eps = 64.0
  with pytest.raises(ConfigError, match=r"evaluation\.checklist\.large_eps = 64\.0"):
    evaluate_robustness(model, variables, config, (x, y), attacks=("clean",))


# Every entry point that takes images refuses 0–255 floats; uint8 works.

def test_evaluate_robustness_refuses_0_255_floats_and_accepts_uint8(config):
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=8)
  config = fast_evaluation(config)
  config.evaluation.checklist.large_eps = 0.0
  with pytest.raises(ValueError, match="data's images holds values in") as error:
    evaluate_robustness(model, variables, config, (x * 255, y), attacks=("clean",))
  for cause in CAUSES:
    assert cause in str(error.value)
  pixels = np.round(x * 255).astype(np.uint8)
  expected = np.argmax(logits_fn(model, variables)(pixels / np.float32(255)), -1)
  report = evaluate_robustness(model, variables, config, (pixels, expected),
                               attacks=("clean", "pgd2"))
  assert report.accuracy("clean") == 1.0 and 0 <= report.accuracy("pgd2") <= 1


def test_svd_study_refuses_0_255_floats(config):
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=4)
  with pytest.raises(ValueError, match="data's images holds values in"):
    svd_study(model, variables, config, (x * 255, y))


def test_the_host_side_attack_runners_refuse_0_255_floats():
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=4)
  fn = jax.tree_util.Partial(logits_fn(model, variables))
  with pytest.raises(ValueError, match="^x holds values in"):
    attacks.AutoAttack(8 / 255, attacks={})(fn, x * 255, y, jax.random.key(0))
  with pytest.raises(ValueError, match="^x has 1 non-finite"):
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    attacks.AutoAttack(8 / 255, attacks={})(fn, bad, y, jax.random.key(0))
  todo = np.ones(len(y), bool)
  with pytest.raises(ValueError, match="^x holds values in"):
    attack_points(attacks.fgsm(8 / 255), fn, x * 255, y, jax.random.key(0), todo,
                  ~todo, x * 255)


def test_run_attack_attacks_uint8_images_as_their_float_pixels():
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=4)
  fn = jax.tree_util.Partial(logits_fn(model, variables))
  pixels = np.round(x * 255).astype(np.uint8)
  attack = attacks.fgsm(8 / 255)
  from_uint8 = run_attack(attack, fn, pixels, y, jax.random.key(0), batch_size=4)
  from_float = run_attack(attack, fn, pixels / np.float32(255), y, jax.random.key(0),
                          batch_size=4)
  np.testing.assert_array_equal(from_uint8.success, from_float.success)
  np.testing.assert_allclose(from_uint8.x_adv, from_float.x_adv, atol=1e-6)
  assert float(np.max(from_uint8.x_adv)) <= 1.0


def test_the_analysis_functions_refuse_0_255_floats():
  model, variables = tiny_model(siriib=True)
  x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
  with pytest.raises(ValueError, match="^images holds values in"):
    x_avg(model, variables, x)
  with pytest.raises(ValueError, match="^images holds values in"):
    penultimate_features(model, variables, x)
  with pytest.raises(ValueError, match="^x holds values in"):
    score_cam(model, variables, x)
  with pytest.raises(ValueError, match="^x holds values in"):
    adversarial_rows(x, x / 255, x / 255)


# Per-class counts: one entry per class of the model.

def test_class_counts_have_an_entry_for_each_class_even_empty_trailing_ones(config):
  model = LinearClassifier()  # 10 classes.
  variables, x, _ = self_labelled_points(model, n=8)
  config.evaluation.checklist.large_eps = 0.0
  y = np.array([0, 1, 2, 2, 3, 4, 5, 5])  # Classes 6–9 empty.
  report = evaluate_robustness(model, variables, config, (x, y), attacks=("clean",))
  assert report.meta["class_counts"] == [1, 1, 2, 1, 1, 2, 0, 0, 0, 0]


def test_training_refuses_8_with_the_same_message(config):
  config.attack.eps = 8.0
  with pytest.raises(ConfigError, match=r"config\.attack\.eps = 8\.0.*write 8/255, not 8"):
    get_strategy(config)
  config.attack.eps, config.attack.step_size = 8 / 255, 2.0
  with pytest.raises(ConfigError, match=r"config\.attack\.step_size = 2\.0.*write 2/255"):
    get_strategy(config)
