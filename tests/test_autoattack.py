"""attacks/autoattack: the ensemble attacks only the points still robust — each component
on what the earlier ones left, each target on what the earlier targets left, Square's
queries in segments on the points still in its loop — with, point by point, the result of
attacking every point with every component (each point attacked alone with its own key,
module doc of attacks/autoattack.py)."""

import jax
import numpy as np
import pytest

from siriib_jax import attacks
from siriib_jax.attacks.autoattack import (QUERY_SIGNIFICANT_BITS, _compiled, attack_points,
                                           bucket_size, chunk_plan)
from tests.helpers import linear_attack_problem


def _cheap_ensemble(eps):
  return {"apgd-ce": attacks.apgd(eps, steps=5),
          "apgd-t": attacks.apgd_targeted(eps, steps=5, n_target_classes=2),
          "square": attacks.square(eps, queries=30)}


def test_only_robust_points_give_the_result_of_attacking_every_point():
  fn, x, y, eps, clean_correct = linear_attack_problem(n=20)
  ensemble = attacks.AutoAttack(eps, attacks=_cheap_ensemble(eps), bucket=8, compact_every=5)
  events = []
  robust_only = ensemble(fn, x, y, jax.random.key(1),
                         progress=lambda name, p: events.append((name, p)))
  every_point = ensemble(fn, x, y, jax.random.key(1), only_robust=False)
  np.testing.assert_array_equal(robust_only.clean_success, ~clean_correct)
  np.testing.assert_array_equal(robust_only.success, every_point.success)
  broken = robust_only.success & clean_correct
  assert 0 < broken.sum() < clean_correct.sum()
  np.testing.assert_array_equal(robust_only.x_adv[broken], every_point.x_adv[broken])
  np.testing.assert_array_equal(robust_only.x_adv[~broken], x[~broken])
  # Component by component: the same points broken first by the same component.
  still_robust = clean_correct.copy()
  for name, component in robust_only.components.items():
    np.testing.assert_array_equal(component.attacked, still_robust)
    np.testing.assert_array_equal(component.success,
                                  every_point.components[name].success & still_robust)
    still_robust &= ~component.success
  assert every_point.components["apgd-ce"].attacked.all()
  # Progress: every component reports, its totals are the points it attacked.
  assert [name for name, _ in events][0] == "apgd-ce"
  assert {name for name, _ in events} == {"apgd-ce", "apgd-t", "square"}
  first_total = {}
  for name, p in events:
    first_total.setdefault((name, p.stage), p.total)
  assert first_total[("apgd-ce", "")] == clean_correct.sum()
  assert first_total[("apgd-t", "target 1/2")] == robust_only.components["apgd-t"].attacked.sum()


def test_square_segments_compile_few_chunk_sizes():
  """Square's gathered chunks take sizes with three significant bits (m · 2^k, m < 8):
  at most four per octave, under a quarter of padding; with a mesh, a multiple of its
  size; on CPU devices, pieces of three sizes."""
  for bucket in (8, 64, 256):
    sizes = [bucket_size(n, bucket, QUERY_SIGNIFICANT_BITS) for n in range(1, bucket + 1)]
    assert all(n <= size <= bucket and 4 * (size - n) < n
               for n, size in zip(range(1, bucket + 1), sizes))
    for octave in range(1, bucket.bit_length() + 1):
      assert len({s for s in sizes if s != bucket and s.bit_length() == octave}) <= 4
  assert [bucket_size(n, 256, multiple=8) for n in (1, 9, 17, 250)] == [8, 16, 24, 256]
  # On CPU devices, pieces of 32, 16 and 8 (of a multiple of the device count): every point
  # once, in order, less than a quarter piece of padding, three sizes at most.
  for multiple in (1, 8):
    for n in range(1, 200):
      plan = chunk_plan(n, 500, QUERY_SIGNIFICANT_BITS, multiple, piece=32)
      assert sum(count for count, _ in plan) == n
      assert all(0 < count <= size and size % multiple == 0 for count, size in plan)
      assert {size for _, size in plan} <= {32, 16, 8}
      assert sum(size for _, size in plan) - n < 8
  assert chunk_plan(129, 500, piece=32) == [(32, 32)] * 4 + [(1, 8)]
  assert chunk_plan(301, 256) == [(256, 256), (45, 48)]  # No piece: whole chunks.
  # A run on this CPU: Square's step compiles for the three piece sizes at most.
  fn, x, y, eps, clean_correct = linear_attack_problem(n=24)
  attack = attacks.square(eps, queries=40)
  success, x_adv = ~clean_correct, x.copy()
  attack_points(attack, fn, x, y, jax.random.key(0), clean_correct, success, x_adv,
                bucket=16, compact_every=4)
  assert _compiled(attack).advance._cache_size() <= 3  # pylint: disable=protected-access


@pytest.mark.parametrize("targeted", [False, True])
def test_stepped_runs_drop_broken_points_with_the_attack_result(targeted):
  """APGD and APGD-T run in segments (`base.Stepped`), each on the points not yet broken
  (and each restart on the points earlier restarts left): point by point, the success and
  x_adv of the attack called on that point alone with its key — for APGD-T, its targets
  one after another, the first success kept."""
  fn, x, y, eps, clean_correct = linear_attack_problem(n=24)
  steps = 12  # Cut at 1, 3 and 5 (`apgd.segment_starts`).
  attack = (attacks.apgd_targeted(eps, steps=steps, n_target_classes=2, restarts=2)
            if targeted else attacks.apgd(eps, steps=steps, restarts=2))
  assert attack.stepped.starts == (0, 1, 3, 5)
  key = jax.random.key(5)
  success, x_adv, events = ~clean_correct, x.copy(), []
  attack_points(attack, fn, x, y, key, clean_correct, success, x_adv, bucket=8,
                broken_only=False, progress=events.append)
  alone = jax.jit(attack.single_target if targeted else attack)
  for j in np.flatnonzero(clean_correct):
    one = lambda k, *rank: alone(fn, x[j:j + 1], y[j:j + 1], jax.random.fold_in(k, j), *rank)
    if targeted:
      expected = one(jax.random.fold_in(key, 1), np.int32(1))
      if not expected.success[0]:
        expected = one(jax.random.fold_in(key, 2), np.int32(2))
    else:
      expected = one(key)
    assert success[j] == bool(expected.success[0]), j
    np.testing.assert_allclose(x_adv[j], np.asarray(expected.x_adv[0]), rtol=0, atol=1e-6)
  broken = success & clean_correct
  assert 0 < broken.sum() < clean_correct.sum()
  # Points broken early left the run: some report came with 0 < done < total.
  assert any(0 < p.done < p.total for p in events), [(p.done, p.total) for p in events]
