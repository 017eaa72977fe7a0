"""attacks/autoattack: the ensemble attacks only the points still robust — each component
on what the earlier ones left, each target on what the earlier targets left, Square's
queries in segments on the points still in its loop — with, point by point, the result of
attacking every point with every component (each point attacked alone with its own key,
module doc of attacks/autoattack.py)."""

import jax
import numpy as np

from siriib_jax import attacks
from siriib_jax.attacks.autoattack import (QUERY_SIGNIFICANT_BITS, _compiled, attack_points,
                                           bucket_size)
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
  size."""
  for bucket in (8, 64, 256):
    sizes = [bucket_size(n, bucket, QUERY_SIGNIFICANT_BITS) for n in range(1, bucket + 1)]
    assert all(n <= size <= bucket and 4 * (size - n) < n
               for n, size in zip(range(1, bucket + 1), sizes))
    for octave in range(1, bucket.bit_length() + 1):
      assert len({s for s in sizes if s != bucket and s.bit_length() == octave}) <= 4
  assert [bucket_size(n, 256, multiple=8) for n in (1, 9, 17, 250)] == [8, 16, 24, 256]
  # A run: each gathering compiles Square's step at most once per size it meets.
  fn, x, y, eps, clean_correct = linear_attack_problem(n=24)
  attack = attacks.square(eps, queries=40)
  success, x_adv = ~clean_correct, x.copy()
  attack_points(attack, fn, x, y, jax.random.key(0), clean_correct, success, x_adv,
                bucket=16, compact_every=4)
  allowed = {bucket_size(n, 16, QUERY_SIGNIFICANT_BITS) for n in range(1, 17)}
  assert _compiled(attack).advance._cache_size() <= len(allowed)  # pylint: disable=protected-access
