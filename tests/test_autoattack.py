"""attacks/autoattack: the ensemble attacks only the points still robust — each component
on what the earlier ones left, each target on what the earlier targets left, Square's
queries in segments on the points still in its loop — with, point by point, the result of
attacking every point with every component (each point attacked alone with its own key,
module doc of attacks/autoattack.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax import attacks
from siriib_jax.attacks.runner import (QUERY_SIGNIFICANT_BITS, _compiled, attack_points,
                                       bucket_size, chunk_plan)
from tests.helpers import linear_attack_problem
from tests.linear_oracle import (CLASSES, in_threat_model, linear_logits, partial_logits,
                                  random_problem, robust)


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
  assert _compiled(attack).score._cache_size() <= 3  # pylint: disable=protected-access


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
  assert attack.stepped.starts == (-1, 1, 3, 5)
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


@pytest.mark.parametrize("targeted", [False, True])
def test_a_stepped_run_begins_at_iteration_minus_one(targeted):
  """`advance` from `fresh_state` over iteration −1 alone is APGD's start (Algorithm 1): a
  random point of the ε-ball, its loss, η = 2ε; for APGD-T the target ranked `rank` by the
  clean logits. The run thus needs one program per chunk size."""
  fn, x, y, eps, _ = linear_attack_problem(n=6)
  attack = (attacks.apgd_targeted(eps, steps=12, n_target_classes=2) if targeted
            else attacks.apgd(eps, steps=12))
  stepped = attack.stepped
  advance = jax.jit(stepped.advance)
  rank = np.int32(2 if targeted else 0)
  start = advance(fn, x, y, jax.random.key(0), rank, np.int32(0),
                  stepped.fresh_state(x), np.int32(-1), np.int32(0))
  delta = np.asarray(start.x) - x
  assert 0 < np.abs(delta).max() <= eps * (1 + 1e-6)
  np.testing.assert_array_equal(start.x_best, start.x)
  np.testing.assert_allclose(start.eta, 2 * eps, rtol=1e-6)
  if targeted:
    ranked = np.argsort(-np.asarray(fn(x)), axis=-1)
    np.testing.assert_array_equal(start.target, ranked[:, 2])
  else:
    logits = np.asarray(fn(start.x))
    expected = -jax.nn.log_softmax(logits)[np.arange(len(y)), y]
    np.testing.assert_allclose(start.loss, expected, rtol=1e-5)


def _autoattack(norm):
  w, b, x, y, eps = random_problem(norm)
  return attacks.autoattack(eps, norm)(partial_logits(w, b), x, y, jax.random.key(0))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_autoattack_reaches_exact_robust_accuracy_of_linear_model(norm):
  w, b, x, y, eps = random_problem(norm)
  result = _autoattack(norm)
  is_robust = robust(w, b, x, y, eps, norm)
  assert not (result.success & is_robust).any()
  assert abs((1 - result.success.mean()) - is_robust.mean()) <= 0.005
  assert in_threat_model(result.x_adv, x, eps, norm)
  np.testing.assert_array_equal(
      result.success, np.argmax(partial_logits(w, b)(result.x_adv), axis=1) != y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_autoattack_robustness_is_and_over_components(norm):
  result = _autoattack(norm)
  assert list(result.components) == ["apgd-ce", "apgd-t", "fab-t", "square"]
  still_robust = ~result.clean_success
  for component in result.components.values():
    np.testing.assert_array_equal(component.attacked, still_robust)  # Only robust points.
    assert not (component.success & ~component.attacked).any()
    still_robust = still_robust & ~component.success
  np.testing.assert_array_equal(~result.success, still_robust)


def test_autoattack_counts_clean_errors_and_reuses_compilations():
  w, b, x, y, eps = random_problem("linf", n=32)
  y = y.copy()
  y[:4] = (y[:4] + 1) % CLASSES  # Misclassified without attack.
  traces = []

  def logits_fn(x):
    traces.append(x.shape)
    return linear_logits(jnp.asarray(w), jnp.asarray(b), x)

  cheap = {"pgd": attacks.pgd(eps, eps / 4, 3), "apgd-t": attacks.apgd_targeted(eps, steps=5)}
  autoattack = attacks.AutoAttack(eps, attacks=cheap)
  first = autoattack(logits_fn, x, y, jax.random.key(0))
  assert first.clean_success[:4].all() and not first.clean_success[4:].any()
  assert first.success[:4].all() and (first.x_adv[:4] == x[:4]).all()
  assert not first.components["pgd"].attacked[:4].any()
  count = len(traces)
  second = autoattack(logits_fn, x, y, jax.random.key(0))
  assert len(traces) == count  # Same buckets: no retrace.
  np.testing.assert_array_equal(first.x_adv, second.x_adv)  # Deterministic for a key.


def test_autoattack_runs_each_target_only_on_the_points_still_robust():
  """As the reference does: target rank r attacks only the points that ranks 1 … r − 1 left
  robust, and a point keeps the x_adv of the rank that broke it. The stand-in attack breaks
  point i at rank i % 4 + 1 (never, for i % 4 = 3: only 3 ranks run) and records what it
  sees."""
  n = 12
  x = np.broadcast_to((np.arange(n, dtype=np.float32) + 1)[:, None, None, None] / 32,
                      (n, 4, 4, 3)).copy()  # Point i is the constant image (i + 1) / 32.
  seen = {}

  def record(rank, ids):
    seen.setdefault(int(rank), set()).update(np.asarray(ids).tolist())

  def single_target(logits_fn, x, y, key, rank):
    del logits_fn, y, key
    ids = jnp.round(x[:, 0, 0, 0] * 32).astype(jnp.int32) - 1
    jax.debug.callback(record, rank, ids)
    return attacks.AttackResult(x + 1e-3 * rank, ids % 4 == rank - 1)

  def all_targets(*args):
    raise AssertionError("AutoAttack must call the attack target by target")

  correct = lambda x: jnp.zeros((len(x), CLASSES)).at[:, 0].set(1.0)  # All clean-correct.
  stand_in = attacks.TargetedAttack(all_targets, single_target, n_target_classes=3)
  result = attacks.AutoAttack(0.1, attacks={"t": stand_in})(correct, x, np.zeros(n, int),
                                                            jax.random.key(0))
  ids = np.arange(n)
  assert seen == {1: set(ids), 2: set(ids[ids % 4 != 0]), 3: set(ids[ids % 4 >= 2])}
  np.testing.assert_array_equal(result.success, ids % 4 != 3)
  expected = x + 1e-3 * np.where(ids % 4 != 3, ids % 4 + 1, 0)[:, None, None, None]
  np.testing.assert_allclose(result.x_adv, expected, rtol=0, atol=1e-7)
  assert result.components["t"].attacked.all()


def test_autoattack_rand_with_eot_on_stochastic_model():
  w, b, x, y, eps = random_problem("linf", n=64)
  noise = 0.01 * jnp.std(jnp.asarray(b))

  def logits_fn(x, key):
    logits = linear_logits(jnp.asarray(w), jnp.asarray(b), x)
    return logits + noise * jax.random.normal(key, logits.shape)

  result = attacks.autoattack(eps, version="rand")(logits_fn, x, y, jax.random.key(0))
  assert list(result.components) == ["apgd-ce", "apgd-dlr"]
  assert in_threat_model(result.x_adv, x, eps, "linf")
  is_robust = robust(w, b, x, y, eps, "linf")
  assert not (result.success & is_robust).any()
  assert abs((1 - result.success.mean()) - is_robust.mean()) <= 0.05
