"""Health of SiRIIB's information-bottleneck path: are c(·)'s units alive, do the skip
features f_i = p_i(c(x_avg)) depend on the image, and does the model use them.

    health = ib_path.path_health(model, variables, images)          # dead units, f_spread
    ablated = ib_path.ablated_logits_fn(model, variables, health.mean_features)
    accuracy = ib_path.skip_ablation(model, variables, evaluation, x, y)  # {"clean": …, "pgd20": …}

`L_info` (paper §4.2) is 0 for any f_i that ignores its input, so training can collapse the
path to constant biases (RESULTS.md, "Collapse of the skip features"); these numbers show it.
"""

import dataclasses
from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from siriib_jax import losses
from siriib_jax.evaluation.attack_specs import build_attack, parse_spec
from siriib_jax.evaluation.batching import attack_key, predict, run_attack
from siriib_jax.models.model_fn import logits_fn

# Below this `f_spread` (feature units) the f_i are taken as constant: the path has collapsed.
COLLAPSE_SPREAD = 1e-3


def dead_unit_fraction(activations: np.ndarray) -> float:
  """The fraction of channels of `activations` (N, H, W, C), a ReLU's output, that no image
  activates at any position (`losses.dead_unit_fraction`). 1.0: every unit dead."""
  return float(losses.dead_unit_fraction(jnp.asarray(activations)))


class PathHealth(NamedTuple):
  """The IB path of a SiRIIB model on a set of images.

  Attributes:
    dead_fraction: fraction of c(·)'s last-ReLU channels no image activates (0 … 1).
    f_spread: the standard deviation over the images of each f_i, averaged over positions
      and channels, then over the f_i (as `losses.feature_spread` over a batch).
    mean_features: the mean of each f_i over the images, each (H_i, W_i, C_i) float32.
    collapsed: every unit dead, or `f_spread` < `COLLAPSE_SPREAD`.
  """
  dead_fraction: float
  f_spread: float
  mean_features: tuple
  collapsed: bool

  def summary(self) -> dict:
    """The scalars, for `summary.json` and the evaluation report."""
    return {"ib_dead_fraction": self.dead_fraction, "f_spread": self.f_spread,
            "ib_collapsed": self.collapsed}


@dataclasses.dataclass(frozen=True)
class _Probe:
  model: nn.Module

  def __call__(self, variables, x):
    output, state = self.model.apply(variables, x, train=False, mutable=["intermediates"])
    h = state["intermediates"]["siriib"]["extractor_output"][0]
    return jnp.max(h, axis=(1, 2)).astype(jnp.float32), tuple(
        f.astype(jnp.float32) for f in output.features)


@jax.jit
def _probe(fn, x):
  return fn(x)


def path_health(model: nn.Module, variables, images: np.ndarray,
                batch_size: int = 256) -> PathHealth:
  """Dead units and f_spread of a SiRIIB plug-in model over `images` (N, H, W, 3) in [0, 1]
  (BatchNorm with running statistics), in batches of `batch_size` (the last one padded).

  Raises:
    ValueError: the model has no SiRIIB plug-in, or no images are given.
  """
  if getattr(model, "siriib", None) is None:
    raise ValueError("path_health: the model has no SiRIIB plug-in")
  n = len(images)
  if n == 0:
    raise ValueError("path_health: no images")
  fn = jax.tree_util.Partial(_Probe(model), variables)
  maxima, sums, squares = [], None, None
  for start in range(0, n, batch_size):
    batch = np.asarray(images[start:start + batch_size], np.float32)
    real = len(batch)
    if real < batch_size and n > batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - real, axis=0)])
    channel_max, features = _probe(fn, batch)
    maxima.append(np.asarray(channel_max)[:real])
    features = [np.asarray(f, np.float64)[:real] for f in features]
    batch_sums = [f.sum(axis=0) for f in features]
    batch_squares = [(f * f).sum(axis=0) for f in features]
    sums = batch_sums if sums is None else [a + b for a, b in zip(sums, batch_sums)]
    squares = batch_squares if squares is None else [a + b for a, b in zip(squares, batch_squares)]
  dead = float(1.0 - np.mean(np.max(np.concatenate(maxima), axis=0) > 0))
  means = [s / n for s in sums]
  spreads = [np.mean(np.sqrt(np.maximum(q / n - m * m, 0.0))) for q, m in zip(squares, means)]
  spread = float(np.mean(spreads)) if spreads else 0.0
  return PathHealth(dead, spread, tuple(m.astype(np.float32) for m in means),
                    bool(dead >= 1.0 or spread < COLLAPSE_SPREAD))


@dataclasses.dataclass(frozen=True)
class _Ablated:
  model: nn.Module

  def __call__(self, variables_and_skips, x):
    variables, skips = variables_and_skips
    return self.model.apply(variables, x, train=False, skips=skips).logits.astype(jnp.float32)


def ablated_logits_fn(model: nn.Module, variables, mean_features) -> jax.tree_util.Partial:
  """`x (B, H, W, 3) -> logits (B, K)` of the model with each f_i replaced by
  `mean_features[i]` (`PathHealth.mean_features`): the skip ablation. A collapsed path gives
  the model's own predictions; a live one changes them."""
  skips = tuple(jnp.asarray(m) for m in mean_features)
  return jax.tree_util.Partial(_Ablated(model), (variables, skips))


def skip_ablation(model: nn.Module, variables, evaluation, x: np.ndarray, y: np.ndarray,
                  attacks: Sequence[str] = ("clean", "pgd20"),
                  health: Optional[PathHealth] = None, own: Optional[dict] = None,
                  mesh=None) -> dict:
  """Accuracy (fraction) of the model with each f_i replaced by its mean over `x`: the skip
  ablation, beside the model's own accuracy under the same `attacks`.

  Args:
    model, variables: a SiRIIB plug-in classifier and its variables.
    evaluation: `config.evaluation` (batch size, seed, threat models of the attack names).
    x: (N, H, W, 3) float images in [0, 1]; y: (N,) labels.
    attacks: "clean" and attack names of `attack_specs` (each attack keyed by its name and
      `evaluation.seed`, as in the evaluation, so own and ablated face the same randomness).
    health: `path_health` on `x`, if already computed.
    own: the model's own accuracies already measured with the same names, key and points
      (the evaluation's rows); the names it lacks are measured here.
  Returns:
    `{"health": health.summary(), "own": {name: accuracy}, "ablated": {name: accuracy},
    "unused": own == ablated}`: `unused` when replacing the f_i by their means changes no
    accuracy (the model does not use its skip features on these points).
  Raises:
    ValueError: the model has no SiRIIB plug-in; ConfigError: an unknown attack name.
  """
  health = path_health(model, variables, x, evaluation.batch_size) if health is None else health
  specs = {name: parse_spec(name, evaluation) for name in attacks if name != "clean"}
  fns = {"own": logits_fn(model, variables),
         "ablated": ablated_logits_fn(model, variables, health.mean_features)}
  result = {"health": health.summary()}
  for which, fn in fns.items():
    known = dict(own or {}) if which == "own" else {}
    accuracy = {name: float(known[name]) for name in attacks if name in known}
    if len(accuracy) == len(attacks):
      result[which] = accuracy
      continue
    correct = predict(fn, x, evaluation.batch_size, mesh) == y
    for name in attacks:
      if name in accuracy:
        continue
      if name == "clean":
        accuracy[name] = float(np.mean(correct))
        continue
      outcome = run_attack(build_attack(specs[name], evaluation), fn, x, y,
                           attack_key(evaluation.seed, name), evaluation.batch_size, correct,
                           mesh=mesh)
      accuracy[name] = float(np.mean(correct & ~outcome.success))
    result[which] = {name: accuracy[name] for name in attacks}
  # The test that counts: a path with some spread left may still carry nothing used.
  result["unused"] = result["own"] == result["ablated"]
  return result
