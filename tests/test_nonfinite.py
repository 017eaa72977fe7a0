"""Non-finite input gradients and non-finite logits (docs/evaluation.md, "What the evaluation
refuses, and why"): every gradient attack steps with NaN/inf gradient entries as 0, never
returns a non-finite x_adv, and never counts a point whose logits are not finite as broken;
`predict` gives such a point no class; the report counts the points with a non-finite
gradient.

The model: 4 classes on 4×4×1 images, `z_k = 10 x_{k+1} + where(x_0 > 1/2, sqrt(x_0 − 1/2),
0)`. The square-root term is the same for every class (it never changes a decision); where
the marker pixel x_0 < 1/2 its value is 0 but its derivative is 0 · NaN = NaN: on those points
the input gradient's marker entry is NaN while the logits stay finite. A point of class y
has x_{y+1} = 1/2 + δ and the other class pixels at 1/2; under L∞ it is robust iff
δ > 2ε, under L2 iff δ > √2 ε, so the exact robust accuracy of the 8 points is 50 %.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax import attacks
from siriib_jax.attacks.base import misclassified
from siriib_jax.attacks.projections import per_example_norm
from siriib_jax.configs import default
from siriib_jax.evaluation import evaluate_robustness
from siriib_jax.evaluation.batching import NO_PREDICTION, clean_pass, predict
from tests.helpers import fast_evaluation

EPS = {"linf": 8 / 255, "l2": 0.25}


def sqrt_logits(x):
  flat = x.reshape(x.shape[0], -1)
  z = flat[:, :1] - 0.5
  bump = jnp.where(z > 0, jnp.sqrt(z), 0.0)  # Value 0, derivative NaN where x_0 < 1/2.
  return 10.0 * flat[:, 1:5] + bump


class SqrtModel(nn.Module):
  """`sqrt_logits` as a Flax model (no parameters)."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return sqrt_logits(x)


def points():
  """8 images (4, 4, 1) and labels: 4 robust (δ = 0.45), 4 breakable (δ = 0.02); the marker
  x_0 = 0.2 (NaN gradient) on points 0, 1, 4, 5 and 0.8 (finite) on the others. The robust
  NaN-gradient points have labels 1 and 2, so a NaN x_adv (argmax 0) would count as broken."""
  labels = np.array([1, 2, 0, 3, 3, 0, 1, 2])
  delta = np.array([0.45] * 4 + [0.02] * 4)
  marker = np.array([0.2, 0.2, 0.8, 0.8, 0.2, 0.2, 0.8, 0.8])
  x = np.full((8, 16), 0.5, np.float32)
  x[:, 0] = marker
  x[np.arange(8), labels + 1] += delta
  return x.reshape(8, 4, 4, 1), labels.astype(np.int32)


ROBUST = np.array([True] * 4 + [False] * 4)


def test_the_model_has_finite_logits_and_nan_gradients():
  x, y = points()
  logits = sqrt_logits(jnp.asarray(x))
  grad = jax.grad(lambda v: jnp.sum(attacks.cross_entropy(sqrt_logits(v), y)))(jnp.asarray(x))
  assert np.all(np.isfinite(logits))
  assert np.all(np.argmax(logits, -1) == y)
  nan_points = ~np.all(np.isfinite(np.asarray(grad).reshape(8, -1)), axis=1)
  np.testing.assert_array_equal(nan_points, x[:, 0, 0, 0] < 0.5)


def build(name, norm):
  eps = EPS[norm]
  step = eps / 4 if norm == "linf" else eps / 5
  return {
      "pgd20": lambda: attacks.pgd(eps, step, 20, norm),
      "cw20": lambda: attacks.pgd(eps, step, 20, norm, loss=attacks.cw_margin),
      "fgsm": lambda: attacks.fgsm(eps, norm),
      "apgd-ce": lambda: attacks.apgd(eps, norm, steps=20),
      "apgd-t": lambda: attacks.apgd_targeted(eps, norm, steps=20, n_target_classes=3),
      "fab-t": lambda: attacks.fab_targeted(eps, norm, steps=20, n_target_classes=3),
  }[name]()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["pgd20", "cw20", "fgsm", "apgd-ce", "apgd-t", "fab-t"])
def test_nan_gradients_give_finite_x_adv_and_the_exact_robust_accuracy(name, norm):
  x, y = points()
  result = build(name, norm)(sqrt_logits, jnp.asarray(x), jnp.asarray(y), jax.random.key(0))
  x_adv, success = np.asarray(result.x_adv), np.asarray(result.success)
  assert np.all(np.isfinite(x_adv)), f"{name} {norm}: non-finite x_adv"
  assert np.all(per_example_norm(jnp.asarray(x_adv - x), norm) <= EPS[norm] * (1 + 1e-5))
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  # No robust point is broken; every breakable one is (FGSM's one step included).
  np.testing.assert_array_equal(success, ~ROBUST)
  # The reported successes are misclassifications at the returned points.
  np.testing.assert_array_equal(np.argmax(sqrt_logits(jnp.asarray(x_adv)), -1) != y, success)


def test_autoattack_on_nan_gradients_gives_the_exact_robust_accuracy():
  x, y = points()
  result = attacks.autoattack(EPS["linf"], "linf", square_queries=50)(
      sqrt_logits, x, y, jax.random.key(0))
  assert np.all(np.isfinite(result.x_adv))
  np.testing.assert_array_equal(result.success, ~ROBUST)


def nan_beyond(x):
  """Class pixels as `sqrt_logits`, but every logit NaN once class 0's pixel x_1 > 0.52:
  an attack that raises x_1 (as against any label other than 0) reaches NaN logits."""
  flat = x.reshape(x.shape[0], -1)
  logits = 10.0 * flat[:, 1:5]
  return jnp.where(flat[:, 1:2] > 0.52, jnp.nan, logits)


@pytest.mark.parametrize("name", ["pgd20", "fgsm", "apgd-ce"])
def test_nan_logits_at_x_adv_are_never_a_success(name):
  x, y = points()
  result = build(name, "linf")(nan_beyond, jnp.asarray(x), jnp.asarray(y), jax.random.key(0))
  logits = np.asarray(nan_beyond(result.x_adv))
  finite = np.all(np.isfinite(logits), axis=-1)
  success = np.asarray(result.success)
  assert not np.any(success & ~finite)
  np.testing.assert_array_equal(success, finite & (np.argmax(logits, -1) != y))


def test_misclassified_and_predict_give_nan_logits_no_class():
  logits = jnp.asarray([[jnp.nan, 0.0], [0.0, 1.0], [jnp.inf, 0.0], [2.0, 1.0]])
  y = jnp.asarray([1, 0, 1, 1])
  np.testing.assert_array_equal(misclassified(logits, y), [False, True, False, True])
  images = np.zeros((4, 1, 1, 1), np.float32)
  images[:, 0, 0, 0] = np.arange(4)
  classes = predict(jax.tree_util.Partial(lambda v: logits[v.reshape(-1).astype(int)]),
                    images, batch_size=4)
  np.testing.assert_array_equal(classes, [NO_PREDICTION, 1, NO_PREDICTION, 0])


def test_clean_pass_gives_predict_classes_and_flags_the_nan_gradient_points():
  x, y = points()
  inf_at_two = lambda v: sqrt_logits(v).at[2, 0].set(jnp.inf)  # Point 2: a logit is inf.
  for fn in (sqrt_logits, inf_at_two):
    fn = jax.tree_util.Partial(fn)
    classes, nonfinite = clean_pass(fn, x, y, batch_size=8)
    np.testing.assert_array_equal(classes, predict(fn, x, batch_size=8))
    np.testing.assert_array_equal(nonfinite[[0, 1, 3, 4, 5, 6, 7]],
                                  [True, True, False, True, True, False, False])
  assert classes[2] == NO_PREDICTION and list(classes[:2]) == [1, 2]


def test_evaluate_robustness_reports_the_exact_accuracy_and_counts_nan_gradients(tmp_path):
  x, y = points()
  model = SqrtModel()
  variables = model.init(jax.random.key(0), x[:1])
  config = fast_evaluation(default.get_config())
  config.evaluation.batch_size = 8
  config.evaluation.l2.eps, config.evaluation.l2.step_size = EPS["l2"], EPS["l2"] / 5
  config.evaluation.checklist.large_eps = 0.0
  report = evaluate_robustness(model, variables, config, (x, y),
                               attacks=("clean", "fgsm", "pgd20", "cw20", "apgd-ce",
                                        "l2-pgd20"), directory=str(tmp_path))
  assert report.accuracy("clean") == 1.0
  for name in ("fgsm", "pgd20", "cw20", "apgd-ce", "l2-pgd20"):
    assert report.accuracy(name) == 0.5, name
  assert report.meta["nonfinite_gradient_points"] == 4
  assert "4 of 8 points have a NaN or inf entry" in (tmp_path / "robustness.md").read_text()
