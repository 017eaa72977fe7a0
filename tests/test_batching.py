"""evaluation/batching: the stratified, seeded subset of test points; attacks run only on
the points still robust, with the result of attacking every point."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from siriib_jax import attacks
from siriib_jax.data import InputPipeline
from siriib_jax.evaluation import select_points
from siriib_jax.evaluation.batching import run_attack
from tests.helpers import assert_same_per_point, linear_attack_problem


def test_subset_is_stratified_and_fixed_by_seed(config):
  config.dataset.name = "cifar10_sample"
  data = InputPipeline(config.dataset, global_batch_size=64, seed=0, training=False)
  all_labels = select_points(data)[1]
  images, labels = select_points(data, 100, seed=3)
  again = select_points(data, 100, seed=3)
  other = select_points(data, 100, seed=4)
  assert len(labels) == 100 and images.dtype == np.uint8
  assert np.array_equal(images, again[0]) and np.array_equal(labels, again[1])
  assert not np.array_equal(images, other[0])
  expected = 100 * np.bincount(all_labels) / len(all_labels)
  assert np.all(np.abs(np.bincount(labels, minlength=10) - expected) < 1)


# Item 1 of issue 16: every attack of an evaluation runs only on the points still robust.
# Each point is attacked alone with its own key (fold_in(key, its index)), so attacking
# only the robust points — targeted attacks target by target, Square's queries in segments
# of 7 on the points still in its loop, chunks of at most 8 points — must give, point by
# point, what attacking every point with every target and query in one go gives.
CHEAP_ATTACKS = {
    "pgd": lambda eps: attacks.pgd(eps, eps / 4, 5),
    "apgd-t": lambda eps: attacks.apgd_targeted(eps, steps=5, n_target_classes=3),
    "fab-t": lambda eps: attacks.fab_targeted(eps, steps=5, n_target_classes=3),
    "square": lambda eps: attacks.square(eps, queries=40),
}


@pytest.mark.parametrize("name", list(CHEAP_ATTACKS))
def test_only_the_robust_points_are_attacked_with_the_result_of_attacking_all(name):
  fn, x, y, eps, clean_correct = linear_attack_problem()
  attack, key = CHEAP_ATTACKS[name](eps), jax.random.key(3)
  events = []
  robust_only = run_attack(attack, fn, x, y, key, 8, clean_correct, compact_every=7,
                           progress=lambda component, p: events.append(p))
  every_point = run_attack(attack, fn, x, y, key, 8, clean_correct, only_robust=False,
                           compact_every=7)
  assert_same_per_point(robust_only, every_point, clean_correct)
  broken = robust_only.success & clean_correct
  assert 0 < broken.sum() < clean_correct.sum()  # Some points break, some do not.
  assert (robust_only.x_adv[~clean_correct] == x[~clean_correct]).all()  # Not attacked.
  # What ran: the clean errors never; each target only on what the earlier ones left.
  totals = {}
  for p in events:
    totals.setdefault(p.stage, p.total)
  assert all(total <= clean_correct.sum() for total in totals.values())
  if name in ("apgd-t", "fab-t"):
    assert list(totals) == ["target 1/3", "target 2/3", "target 3/3"]
    assert totals["target 1/3"] == clean_correct.sum()
    for rank in (1, 2):  # Target r + 1 attacks exactly what targets 1 … r left robust.
      left = [p.robust for p in events if p.stage == f"target {rank}/3"][-1]
      assert totals[f"target {rank + 1}/3"] == left
  if name == "square":  # Gathered between segments: broken points leave the loop early.
    done = [p.done for p in events]
    assert done == sorted(done) and done[-1] == totals[""] == clean_correct.sum()
    assert any(0 < p.done < p.total for p in events[:-1]), done


# Issue 16 item 2: the points of an evaluation sharded over the data mesh. Each point is
# attacked alone with its own key, so 8 devices must give, point by point, the 1-device
# result. A subprocess, since the device count is fixed when JAX starts.
_SHARDED_EVALUATION_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "  # And conftest's:
                           "--xla_backend_optimization_level=0 "
                           "--xla_llvm_disable_expensive_passes=true")
sys.path.insert(0, {repo!r})
import jax, numpy as np
from siriib_jax import parallel
from siriib_jax.configs import default
from siriib_jax.evaluation import evaluate_robustness
from tests.helpers import LinearClassifier, fast_evaluation, self_labelled_points
assert jax.device_count() == 8
config = fast_evaluation(default.get_config())
config.evaluation.batch_size = 16
config.evaluation.square_queries = 20
config.evaluation.linf.eps, config.evaluation.linf.step_size = 1 / 255, 0.25 / 255  # ~Half break.
config.evaluation.checklist.large_eps = 0
config.evaluation.save_examples = True
model = LinearClassifier()
variables, x, y = self_labelled_points(model, n=20)
y = y.copy()
y[:2] = (y[:2] + 1) % 10
saved = {{}}
for devices in (jax.devices()[:1], None):  # None: the default mesh, every device.
  mesh = parallel.data_mesh(devices) if devices else None
  directory = os.path.join({tmp!r}, str(len(devices or jax.devices())))
  evaluate_robustness(model, variables, config, (x, y), attacks=("clean", "pgd20", "autoattack"),
                      directory=directory, mesh=mesh)
  saved[directory] = {{name: dict(np.load(os.path.join(directory, name + ".npz")))
                      for name in ("pgd20", "autoattack")}}
one, eight = saved.values()
for name in ("pgd20", "autoattack"):
  robust = one[name]["robust"]
  np.testing.assert_array_equal(robust, eight[name]["robust"])
  assert 0 < robust.sum() < 18, (name, robust)
  broken = ~robust & (one[name]["clean_prediction"] == y)
  np.testing.assert_array_equal(one[name]["x_adv"][broken], eight[name]["x_adv"][broken])
print("OK")
"""


def test_eight_devices_give_the_one_device_result_point_by_point(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = _SHARDED_EVALUATION_SCRIPT.format(repo=repo, tmp=str(tmp_path))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=900, check=False)
  assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
