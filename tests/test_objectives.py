"""Attack objectives and class counts: losses that read the k-th largest logit (DLR, targeted
DLR) and the attacks built on them refuse fewer classes before compiling, and with 2, 3
and 4 classes every attack that runs reaches the exact robust count of a linear model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.attacks import apgd, apgd_targeted, autoattack, fab_targeted
from siriib_jax.attacks.objectives import (ClassCountError, cw_margin, dlr, dlr_targeted,
                                           min_classes)
from tests.helpers import linear_problem
from tests.linear_oracle import linear_logits, robust


def _logits_fn(w, b):
  return jax.tree_util.Partial(linear_logits, jnp.asarray(w), jnp.asarray(b))


def _random_logits(classes, batch=8, seed=0):
  """Logits (batch, classes) and labels: the top class (what an attack starts from)."""
  logits = np.random.default_rng(seed).normal(size=(batch, classes)).astype(np.float32)
  return jnp.asarray(logits), jnp.asarray(np.argmax(logits, axis=1))


@pytest.mark.parametrize("loss, required", [(dlr, 3), (dlr_targeted, 4), (cw_margin, 2)])
def test_losses_refuse_fewer_classes_when_traced_and_vary_from_their_minimum(loss, required):
  assert min_classes(loss) == required
  call = (lambda z, y: loss(z, y, (y + 1) % z.shape[-1])) if loss is dlr_targeted else loss
  for classes in range(1, required):
    logits, y = _random_logits(classes)
    with pytest.raises(ClassCountError, match=rf"at least {required} classes.* have {classes}"):
      jax.jit(call).lower(logits, y)  # Traced, not compiled.
  # From `required` classes on, the loss of a correctly classified point is not a constant:
  # its gradient does not vanish (with the 3rd logit read out of range and clamped, DLR
  # with 2 classes is ±1 and its gradient ~5e-8).
  logits, y = _random_logits(required)
  grad = jax.grad(lambda z: jnp.sum(call(z, y)))(logits)
  assert np.all(np.isfinite(grad)) and np.min(np.abs(grad).sum(axis=1)) > 1e-2


@pytest.mark.parametrize("classes", [2, 3])
def test_attacks_that_need_more_classes_name_themselves_before_compiling(classes):
  w, b, x, y, eps, _ = linear_problem(classes, "linf", n=8)
  needs = {"apgd-dlr": (apgd(eps, loss=dlr, steps=5), 3),
           "apgd-t": (apgd_targeted(eps, steps=5), 4)}
  for name, (attack, required) in needs.items():
    if classes >= required:
      continue
    with pytest.raises(ClassCountError, match=rf"^{name} .* at least {required} classes.* "
                                              rf"have {classes}"):
      jax.jit(attack).lower(_logits_fn(w, b), x, y, jax.random.key(0))
  single = apgd_targeted(eps, steps=5).single_target
  with pytest.raises(ClassCountError, match="apgd-t"):
    jax.jit(single).lower(_logits_fn(w, b), x, y, jax.random.key(0), np.int32(1))


# Per class count, the attacks defined for it. APGD-CE is exact with 2 classes (its
# cross-entropy is then a monotone function of the margin); otherwise each may miss by one
# point of 64 (the same bound as in test_attacks: 1 pp at 256 points).
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("classes", [2, 3, 4])
def test_every_attack_defined_for_the_classes_reaches_the_oracle(classes, norm):
  w, b, x, y, eps, _ = linear_problem(classes, norm, n=64, seed=classes)
  is_robust = robust(w, b, x, y, eps, norm)
  assert 0.3 < is_robust.mean() < 0.7
  defined = {"apgd-ce": (apgd(eps, norm), 0 if classes == 2 else 1)}
  if classes >= 3:
    defined["apgd-dlr"] = (apgd(eps, norm, loss=dlr), 1)
  if classes >= 4:
    defined["apgd-t"] = (apgd_targeted(eps, norm), 1)
  for name, (attack, tolerance) in defined.items():
    success = np.asarray(jax.jit(attack)(_logits_fn(w, b), x, y, jax.random.key(0)).success)
    assert not (success & is_robust).any(), name  # Never beyond the oracle.
    assert abs(int((~success).sum()) - int(is_robust.sum())) <= tolerance, (
        name, int((~success).sum()), int(is_robust.sum()))


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_autoattack_leaves_out_what_the_classes_do_not_define_and_is_exact(classes):
  w, b, x, y, eps, _ = linear_problem(classes, "linf", n=64, seed=classes)
  result = autoattack(eps, "linf")(_logits_fn(w, b), x, y, jax.random.key(0))
  expected = {"apgd-t"} if classes < 4 else set()
  assert set(result.skipped) == expected
  assert all(f"have {classes}" in why or f"has {classes}" in why
             for why in result.skipped.values())
  assert set(result.components) == {"apgd-ce", "apgd-t", "fab-t", "square"} - expected
  np.testing.assert_array_equal(result.success, ~robust(w, b, x, y, eps, "linf"))


@pytest.mark.parametrize("make", [lambda eps: apgd_targeted(eps, steps=20),
                                  lambda eps: fab_targeted(eps, steps=20)],
                         ids=["apgd-t", "fab-t"])
def test_single_target_outside_the_ranks_attacks_nothing(make):
  """With 4 classes the targets are ranks 1 … 3: rank 3 attacks, ranks 4 and 0 (which an
  out-of-range index, clamped under jit, would turn into rank 3 and the true class) do
  not."""
  w, b, x, y, eps, _ = linear_problem(4, "linf", n=32, seed=4)
  single = jax.jit(make(3 * eps).single_target)  # The least likely class is then in reach.
  results = [single(_logits_fn(w, b), x, y, jax.random.key(0), np.int32(rank))
             for rank in (3, 4, 0)]
  assert np.asarray(results[0].success).any()
  for result in results[1:]:
    assert not np.asarray(result.success).any()
    np.testing.assert_array_equal(result.x_adv, x)
