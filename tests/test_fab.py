"""FAB-T (`attacks/fab.py`) on a linear classifier, whose exact robustness is known in closed
form (`tests/linear_attacks.py`): the threat model, the exact robust radius, the single-target
runs, and the smallest step to a hyperplane inside the box."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.attacks.fab import fab_targeted, hyperplane_box_step
from siriib_jax.attacks.projections import per_example_norm
from tests.linear_attacks import (BATCH, KEY, assert_in_threat_model_with_true_flags,
                                  compiled, data, l2_radius, linear_logits, linf_radius,
                                  median_eps as _eps, run)

ATTACKS = [("fab", "linf"), ("fab", "l2")]


@pytest.mark.parametrize("name,norm", ATTACKS)
def test_threat_model_and_success_flags(name, norm):
  assert_in_threat_model_with_true_flags(name, norm)


def test_deterministic_for_a_key():
  # Only repeatability: FAB's random restarts rarely beat its first run on a linear model,
  # so another key may give the same x_adv.
  attack = compiled("fab", "l2", restarts=2)
  x, y = data("l2")
  first, again = (jax.device_get(attack(x, y, jax.random.PRNGKey(1))) for _ in range(2))
  np.testing.assert_array_equal(first.x_adv, again.x_adv)
  np.testing.assert_array_equal(first.success, again.success)


def test_fab_linf_finds_the_exact_robust_radius():
  x, _, eps, result = run("fab", "linf")
  radius = linf_radius()
  clear = np.abs(radius / eps - 1) > 0.01  # Points with r* within 1% of ε may go either way.
  assert clear.sum() >= BATCH - 4
  np.testing.assert_array_equal(result.success[clear], radius[clear] <= eps)
  # Where it succeeds, FAB is minimal: its perturbation is close to r* (steps overshoot ~5%).
  found = np.asarray(per_example_norm(result.x_adv - x, "linf"))[result.success]
  assert np.all(found >= radius[result.success] * (1 - 1e-4))
  assert np.all(found <= radius[result.success] * 1.1)


def test_fab_l2_finds_the_exact_robust_radius_inside_the_box():
  x, _, eps, result = run("fab", "l2")
  radius, in_box = l2_radius()
  clear = in_box & (np.abs(radius / eps - 1) > 0.01)
  assert clear.sum() >= BATCH // 2
  np.testing.assert_array_equal(result.success[clear], radius[clear] <= eps)
  found = np.asarray(per_example_norm(result.x_adv - x, "l2"))[result.success]
  assert np.all(found >= radius[result.success] * (1 - 1e-4))
  assert np.all(found <= radius[result.success] * 1.1)


@pytest.mark.parametrize("restarts", [1, 2])
def test_fab_single_targets_add_up_to_the_call_over_all_targets(restarts):
  """`single_target(rank)` makes exactly the runs of that rank in the full call (AutoAttack
  calls it rank by rank): a point is broken by the full call iff by some rank alone."""
  norm, n_targets = "l2", 3
  x, y = data(norm)
  attack = fab_targeted(_eps(norm), norm=norm, restarts=restarts, steps=20,
                        n_target_classes=n_targets)
  everything = jax.jit(functools.partial(attack, linear_logits))(x, y, KEY)
  single = jax.jit(functools.partial(attack.single_target, linear_logits))
  by_rank = [np.asarray(single(x, y, KEY, np.int32(rank)).success)
             for rank in range(1, n_targets + 1)]
  assert by_rank[0].any() and not by_rank[0].all()
  np.testing.assert_array_equal(np.asarray(everything.success), np.any(by_rank, axis=0))


def _smallest_box_step(p, w, r, norm):
  """NumPy oracle for `hyperplane_box_step`: w·d as a function of the step length τ is
  piecewise linear between the knees, so τ is an interpolation between knee values."""
  direction = np.sign(w) * np.where(r < 0, -1.0, 1.0)[:, None]
  room = np.where(direction > 0, 1.0 - p, p)
  abs_w = np.abs(w)
  speed = np.ones_like(w) if norm == "linf" else abs_w
  knee = np.where(abs_w * speed > 0, room / np.where(speed > 0, speed, 1.0), 0.0)
  steps = []
  for i in range(len(p)):
    taus = np.unique(np.concatenate([[0.0], knee[i]]))
    reached = np.sum(abs_w[i] * np.minimum(taus[:, None] * speed[i], room[i]), axis=1)
    tau = np.interp(abs(r[i]), reached, taus)  # Beyond the last knee: the box corner.
    steps.append(direction[i] * np.minimum(tau * speed[i], room[i]))
  return np.stack(steps)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_hyperplane_box_step_is_the_smallest_step_in_the_box(norm, scale):
  rng = np.random.default_rng(0)
  p = np.clip(rng.uniform(-0.2, 1.2, (16, 50)), 0, 1)  # Some coordinates on the faces.
  w = rng.normal(size=(16, 50)) * (rng.uniform(size=(16, 50)) > 0.1)  # Some zero weights.
  r = scale * rng.normal(size=16)
  d = np.asarray(jax.jit(hyperplane_box_step, static_argnums=3)(
      jnp.asarray(p, jnp.float32), jnp.asarray(w, jnp.float32), jnp.asarray(r, jnp.float32),
      norm), np.float64)
  np.testing.assert_allclose(d, _smallest_box_step(p, w, r, norm), atol=2e-5)
  assert np.all(p + d >= -1e-6) and np.all(p + d <= 1 + 1e-6)
