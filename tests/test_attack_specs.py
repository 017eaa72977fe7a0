"""Every attack name the config check accepts, the evaluation runs: each registry name and
each form of the grammar (`attacks/registry.py`, docs/evaluation.md: `pgd<N>`, `cw<N>`, the
`l2-` prefix, `clean`, `adaptive`) passes `validate_evaluation_config` and runs through
`evaluate_robustness` on a tiny model; a name outside the grammar is refused by both before
anything runs."""

import pytest

from siriib_jax.attacks import registry
from siriib_jax.config_errors import ConfigError
from siriib_jax.config_validation import validate_evaluation_config
from siriib_jax.configs import default
from siriib_jax.evaluation import attack_specs, evaluate_robustness
from siriib_jax.evaluation import robustness
from tests.helpers import LinearClassifier, SiriibLike, fast_evaluation, self_labelled_points

# The smallest step counts of the step families.
REGISTRY_FORMS = tuple(registry.ATTACKS) + ("pgd1", "cw1")
GRAMMAR_FORMS = (REGISTRY_FORMS + tuple(attack_specs.L2_PREFIX + n for n in REGISTRY_FORMS)
                 + attack_specs.SPECIAL_NAMES)
REFUSED = ("pgd0", "pgd", "cw", "pgd-20", "PGD20", "l2-clean", "l2-adaptive", "l2-l2-pgd1",
           "linf-pgd1", "apgd_ce", "autoattack-standard")
POINTS = 6


def _config():
  config = fast_evaluation(default.get_config())
  e = config.evaluation
  # Small balls, so that some points survive the first components.
  e.linf.eps, e.linf.step_size = 2 / 255, 0.5 / 255
  e.l2.eps, e.l2.step_size = 0.1, 0.025
  e.checklist.large_eps = 0.0
  e.adaptive_steps = 1
  return config


def test_the_execution_table_covers_the_registry_exactly():
  assert set(attack_specs.EXECUTION) == set(registry.ATTACKS) | set(registry.ITERATIVE_LOSSES)


@pytest.mark.parametrize("name", GRAMMAR_FORMS)
def test_every_grammar_form_passes_the_config_check(name):
  config = _config()
  config.evaluation.attacks = config.final_eval_attacks = (name,)
  validate_evaluation_config(config)


@pytest.mark.parametrize("name", REFUSED)
def test_a_name_outside_the_grammar_is_refused_before_anything_runs(name, monkeypatch):
  config = _config()
  config.evaluation.attacks = ("clean", "pgd1", name)
  with pytest.raises(ConfigError, match=rf"config\.evaluation\.attacks.*'{name}'"):
    validate_evaluation_config(config)

  def nothing_runs(*args, **kwargs):
    raise AssertionError("the model ran before the names were checked")

  monkeypatch.setattr(robustness, "predict", nothing_runs)
  monkeypatch.setattr(robustness, "run_attack", nothing_runs)
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=POINTS)
  with pytest.raises(ConfigError):
    evaluate_robustness(model, variables, config, (x, y))


def _run(names):
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=POINTS)
  report = evaluate_robustness(model, variables, _config(), (x, y), attacks=names)
  rows = {row.name: row for row in report.rows}
  assert set(rows) == set(names)
  for name, row in rows.items():
    assert row.total == POINTS and 0 <= row.robust <= rows["clean"].robust, name
  return report


def test_autoattack_rand_and_the_cheap_forms_run_through_the_evaluation():
  report = _run(("clean", "fgsm", "pgd1", "cw1", "l2-pgd1", "autoattack-rand"))
  # AutoAttack rand on a deterministic model: APGD-CE and APGD-DLR with EOT (every draw the
  # same), each on the points still robust.
  assert list(report.autoattack["autoattack-rand"]) == ["apgd-ce", "apgd-dlr"]


@pytest.mark.slow  # 43 s and 138 s in two runs on a shared 2-core AMD EPYC.
def test_every_registry_name_and_grammar_form_runs_through_the_evaluation():
  report = _run(tuple(n for n in GRAMMAR_FORMS if n != "adaptive"))
  for norm in ("", attack_specs.L2_PREFIX):
    assert list(report.autoattack[f"{norm}autoattack-rand"]) == ["apgd-ce", "apgd-dlr"]
    assert list(report.autoattack[f"{norm}autoattack"]) == [
        "apgd-ce", "apgd-t", "fab-t", "square"]


def test_adaptive_runs_through_the_evaluation_on_a_siriib_model():
  model = SiriibLike()
  variables, x, y = self_labelled_points(model, n=POINTS)
  report = evaluate_robustness(model, variables, _config(), (x, y),
                               attacks=("clean", "adaptive"))
  adaptive = [row for row in report.rows if row.group == "adaptive"]
  assert len(adaptive) == 6 and all(row.total == POINTS for row in adaptive)


@pytest.mark.parametrize("name", ("pgd-20", "l2-pgd20", "clean", "adaptive", "pgd0"))
def test_a_large_eps_attack_outside_the_registry_is_refused_before_anything_runs(
    name, monkeypatch):
  config = _config()
  config.evaluation.checklist.large_eps, config.evaluation.checklist.large_eps_attack = (
      16 / 255, name)
  with pytest.raises(ConfigError, match=r"config\.evaluation\.checklist\.large_eps_attack"):
    validate_evaluation_config(config)

  def nothing_runs(*args, **kwargs):
    raise AssertionError("the model ran before the names were checked")

  monkeypatch.setattr(robustness, "predict", nothing_runs)
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=POINTS)
  with pytest.raises(ConfigError, match="large_eps_attack"):
    evaluate_robustness(model, variables, config, (x, y), attacks=("clean", "pgd1"))


@pytest.mark.parametrize("name", ("fgsm", "pgd1", "autoattack-rand"))
def test_every_large_eps_attack_form_runs(name):
  config = _config()
  config.evaluation.checklist.large_eps, config.evaluation.checklist.large_eps_attack = (
      16 / 255, name)
  validate_evaluation_config(config)
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=POINTS)
  report = evaluate_robustness(model, variables, config, (x, y), attacks=("clean",))
  assert [row.name for row in report.rows] == ["clean", f"large-eps-{name}"]


@pytest.mark.parametrize("key", ("attacks", "grid_attacks"))
@pytest.mark.parametrize("name", ("pgd-20", "clean", "adaptive", "l2-pgd0"))
def test_the_svd_studys_attack_names_are_checked(key, name):
  config = _config()
  config.evaluation.svd_study[key] = ("pgd1", name)
  with pytest.raises(ConfigError, match=rf"config\.evaluation\.svd_study\.{key}.*'{name}'"):
    validate_evaluation_config(config)
  config.evaluation.svd_study[key] = ("pgd1", "l2-autoattack-rand")
  validate_evaluation_config(config)
