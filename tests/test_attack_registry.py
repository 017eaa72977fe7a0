"""attacks/registry: the attack-name grammar and `get_attack`."""

import pytest

from siriib_jax import attacks
from siriib_jax.attacks.registry import parse_attack_name
from siriib_jax.config_errors import ConfigError


@pytest.mark.parametrize("name,family,steps,label", [
    ("pgd20", "pgd", 20, "PGD-20"), ("cw100", "cw", 100, "C&W-100"),
    ("apgd-t", "apgd", None, "APGD-T"), ("fab-t", "fab", None, "FAB-T"),
    ("autoattack", "autoattack", None, "AutoAttack"), ("square", "square", None, "Square"),
    ("fgsm", "fgsm", None, "FGSM")])
def test_names_parse_into_family_steps_and_the_papers_label(name, family, steps, label):
  parsed = parse_attack_name(name)
  assert (parsed.family, parsed.steps, parsed.label) == (family, steps, label)


@pytest.mark.parametrize("name", ["pgd", "pgd-20", "pgd0", "cw", "autoatack", "l2-pgd20"])
def test_a_name_outside_the_grammar_is_refused(name):
  with pytest.raises(ValueError):
    parse_attack_name(name)


def test_get_attack_passes_its_arguments_to_the_factory():
  assert attacks.get_attack("autoattack", 8 / 255, square_queries=7).attacks["square"]
  aa = attacks.get_attack("autoattack", 8 / 255, bucket=16)
  assert aa.bucket == 16 and list(aa.attacks) == ["apgd-ce", "apgd-t", "fab-t", "square"]
  with pytest.raises(ConfigError, match="did you mean 'apgd-ce'"):
    attacks.get_attack("apgd_ce", 8 / 255)
