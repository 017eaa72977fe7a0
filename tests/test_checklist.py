"""The gradient-masking checklist (`evaluation/checklist.py`): each item on hand-made rows."""

import ml_collections
import pytest

from siriib_jax.evaluation import checklist
from siriib_jax.evaluation.report import Row


def row(name, accuracy, group="linf", family="pgd", steps=None, total=100, attack=None,
        eps=8 / 255):
  return Row(group, name, attack or name, name.upper(), family, "linf", eps, None, steps,
             accuracy, int(round(accuracy * total)), total, 0.0)


def test_large_eps_passes_at_or_below_the_bound_and_skips_without_the_run():
  assert checklist.large_eps([row("big", 0.01, group="checklist")], 0.01).passed is True
  assert checklist.large_eps([row("big", 0.02, group="checklist")], 0.01).passed is False
  assert checklist.large_eps([row("pgd20", 0.5)], 0.01).passed is None


def test_more_steps_compares_consecutive_step_counts_within_the_slack():
  rows = [row("pgd20", 0.40, steps=20), row("pgd100", 0.405, steps=100)]
  assert checklist.more_steps(rows, slack=0.01).passed is True
  assert checklist.more_steps(rows, slack=0.001).passed is False
  assert checklist.more_steps([row("pgd20", 0.4, steps=20)], 0.01).passed is None


def test_autoattack_must_be_no_weaker_than_any_attack_of_its_norm():
  rows = [row("pgd20", 0.40, steps=20), row("autoattack", 0.42, family="autoattack")]
  assert checklist.autoattack_strongest(rows, slack=0.01).passed is False
  assert checklist.autoattack_strongest(rows, slack=0.02).passed is True


def test_square_breaking_what_white_box_attacks_left_fails_the_check():
  aa = row("autoattack", 0.40, family="autoattack")
  cascade = {"autoattack": {"square": {"broken": 3}}}
  assert checklist.black_box_weaker([aa], cascade, slack=0.01).passed is False
  assert checklist.black_box_weaker([aa], cascade, slack=0.03).passed is True
  alone = [row("square", 0.30, family="square"), row("pgd20", 0.40, steps=20)]
  assert checklist.black_box_weaker(alone, {}, slack=0.01).passed is False


def test_an_adaptive_loss_stronger_than_ce_fails_the_check():
  rows = [row("adaptive:ce", 0.40, group="adaptive", attack="ce"),
          row("adaptive:svd", 0.30, group="adaptive", attack="svd")]
  assert checklist.adaptive(rows, slack=0.01).passed is False
  rows[1] = row("adaptive:svd", 0.45, group="adaptive", attack="svd")
  assert checklist.adaptive(rows, slack=0.01).passed is True


@pytest.mark.parametrize("total, tolerance, slack", [(100, 0.01, 0.01), (20, 0.01, 0.05)])
def test_run_checklist_slack_is_at_least_one_point(total, tolerance, slack):
  config = ml_collections.ConfigDict({"tolerance": tolerance, "max_large_eps_accuracy": 0.01})
  rows = [row("pgd20", 0.40, steps=20, total=total),
          row("pgd100", 0.40 + slack * 0.99, steps=100, total=total)]
  items = {i.name: i for i in checklist.run_checklist(rows, {}, config)}
  assert items["more_steps"].passed is True
