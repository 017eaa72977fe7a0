"""Adversarial training strategies (paper §5.1, SPEC §4), looked up by `config.strategy`.

A `Strategy` is everything one strategy adds to the train step (`training/step.py`), which
composes it with the SiRIIB terms:
  * an inner attack that makes `x_adv` from `(logits_fn, x, y, key, clean_logits)`;
  * its per-example loss `L_ori`, from the model's logits on `x_adv` and on `x`;
  * for AWP (Wu et al. 2020), the adversarial weight perturbation (`WeightPerturbation`);
  * for TE (Dong et al. 2022), the ensemble of past predictions and its consistency term
    (`TemporalEnsemble`).
"""

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from siriib_jax import losses
from siriib_jax.attacks.pgd import fgsm, pgd
from siriib_jax.attacks.threat_model import check_config_radius, check_config_step_size
from siriib_jax.config_errors import check_choice, fail
from siriib_jax.registry import Registry

_AWP_EPS = 1e-20


@dataclasses.dataclass(frozen=True)
class WeightPerturbation:
  """AWP's layer-wise weight perturbation `v_l = γ ‖w_l‖ g_l / ‖g_l‖` (Wu et al. 2020, §4),
  recomputed each step from the gradient `g` of the loss at the current weights.

  Attributes:
    gamma: γ, the perturbation's size relative to each kernel's norm (5e-3 in the paper).
  """
  gamma: float

  def __call__(self, params, grads):
    """`params + v` for every kernel (ndim > 1); biases and BatchNorm parameters unchanged.

    Args:
      params, grads: pytrees of the same structure (float32 arrays).
    """
    def perturb(w, g):
      if w.ndim <= 1:
        return w
      return w + self.gamma * jnp.linalg.norm(w) / (jnp.linalg.norm(g) + _AWP_EPS) * g
    return jax.tree.map(perturb, params, grads)


@dataclasses.dataclass(frozen=True)
class TemporalEnsemble:
  """Temporal ensembling of predictions (Laine & Aila 2017; for AT: Dong et al. 2022).

  Each training example keeps `ensemble[i]`, a running average of its predicted
  probabilities on x_adv, `α · ensemble[i] + (1 − α) · p`, bias-corrected by `1 − α^epoch`.
  The loss adds `w(epoch) · mean_k (p_k − target_k)²` per example, with the Gaussian ramp-up
  `w(epoch) = weight · exp(−5 (1 − t)²)`, t = epoch / rampup_epochs clipped to 1, and 0 in
  epoch 0 (nothing ensembled yet).

  Attributes:
    alpha: α, the ensemble's momentum (0.9 in the paper).
    weight: the consistency term's final weight (300 in the paper).
    rampup_epochs: epochs of the ramp-up.
  """
  alpha: float
  weight: float
  rampup_epochs: int

  def init(self, num_examples: int, num_classes: int) -> jnp.ndarray:
    """The empty ensemble, (num_examples, num_classes) float32 zeros."""
    return jnp.zeros((num_examples, num_classes), jnp.float32)

  def weight_at(self, epoch: jnp.ndarray) -> jnp.ndarray:
    """`w(epoch)`, a float32 scalar."""
    t = jnp.minimum(epoch / self.rampup_epochs, 1.0)
    return jnp.where(epoch > 0, self.weight * jnp.exp(-5.0 * (1.0 - t) ** 2), 0.0)

  def consistency(self, logits_adv: jnp.ndarray, ensemble: jnp.ndarray, index: jnp.ndarray,
                  epoch: jnp.ndarray) -> jnp.ndarray:
    """The per-example term (B,) for logits (B, K) of the examples `index` (B,)."""
    target = ensemble[index] / (1.0 - self.alpha ** jnp.maximum(epoch, 1))
    probs = jax.nn.softmax(logits_adv)
    return self.weight_at(epoch) * jnp.mean((probs - target) ** 2, axis=-1)

  def update(self, ensemble: jnp.ndarray, index: jnp.ndarray,
             logits_adv: jnp.ndarray) -> jnp.ndarray:
    """The ensemble after this batch's predictions."""
    updated = self.alpha * ensemble[index] + (1 - self.alpha) * jax.nn.softmax(logits_adv)
    return ensemble.at[index].set(updated)


@dataclasses.dataclass(frozen=True)
class Strategy:
  """How one strategy trains.

  Attributes:
    attack: `(logits_fn, x, y, key, clean_logits) -> x_adv`, the inner maximisation.
    loss: `(logits_adv, logits_clean, y) -> (B,)`, `L_ori`; `logits_clean` is None unless
      `needs_clean` (or SiRIIB) asks for the clean forward pass.
    needs_clean: the loss uses the clean logits (TRADES).
    attack_uses_clean: the attack needs the clean logits (TRADES' KL inner loss).
    weight_perturbation: AWP's, applied before the update; None for no AWP. Only the
      gradient is taken at the perturbed weights: the update, and the weight average
      (`weight_averaging`), are of the real ones.
    ensemble: TE's; None for no temporal ensembling.
  """
  attack: Callable
  loss: Callable[[jnp.ndarray, Optional[jnp.ndarray], jnp.ndarray], jnp.ndarray]
  needs_clean: bool = False
  attack_uses_clean: bool = False
  weight_perturbation: Optional[WeightPerturbation] = None
  ensemble: Optional[TemporalEnsemble] = None


def _pgd_ce(config: ml_collections.ConfigDict) -> Callable:
  """PGD on the cross-entropy from a uniform random start (Madry et al. 2018), returning its
  last iterate (the inner maximisation's)."""
  a = config.attack
  attack = pgd(a.eps, a.step_size, a.steps, norm="linf", unroll=a.unroll, keep="last")
  return lambda logits_fn, x, y, key, clean_logits: attack(logits_fn, x, y, key).x_adv


def _pgd_trades_kl(config: ml_collections.ConfigDict) -> Callable:
  """PGD on `KL(p_clean ‖ p_adv)` from `x + 0.001 · N(0, I)` (Zhang et al. 2019, Alg. 1)."""
  a = config.attack

  def attack(logits_fn, x, y, key, clean_logits):
    kl = lambda logits, _: losses.trades_kl(logits, clean_logits)
    run = pgd(a.eps, a.step_size, a.steps, norm="linf", loss=kl, start_noise=0.001,
              unroll=a.unroll, keep="last")
    return run(logits_fn, x, y, key).x_adv

  return attack


def _cross_entropy_adv(logits_adv, logits_clean, y):
  del logits_clean
  return losses.cross_entropy(logits_adv, y)


def _trades_loss(beta: float):
  def loss(logits_adv, logits_clean, y):
    return losses.cross_entropy(logits_clean, y) + beta * losses.trades_kl(logits_adv,
                                                                          logits_clean)
  return loss


def pgd_at(config: ml_collections.ConfigDict) -> Strategy:
  """PGD-AT (Madry et al. 2018): cross-entropy on PGD's x_adv."""
  return Strategy(_pgd_ce(config), _cross_entropy_adv)


def trades(config: ml_collections.ConfigDict) -> Strategy:
  """TRADES (Zhang et al. 2019): CE(x) + β KL(p(x) ‖ p(x_adv)), x_adv from the KL."""
  return Strategy(_pgd_trades_kl(config), _trades_loss(config.trades_beta), needs_clean=True,
                  attack_uses_clean=True)


def awp_pgd_at(config: ml_collections.ConfigDict) -> Strategy:
  """PGD-AT with AWP (Wu et al. 2020)."""
  return dataclasses.replace(pgd_at(config),
                             weight_perturbation=WeightPerturbation(config.awp_gamma))


def awp_trades(config: ml_collections.ConfigDict) -> Strategy:
  """TRADES with AWP (Wu et al. 2020)."""
  return dataclasses.replace(trades(config),
                             weight_perturbation=WeightPerturbation(config.awp_gamma))


def te(config: ml_collections.ConfigDict) -> Strategy:
  """PGD-AT with temporal ensembling (Dong et al. 2022); ramp-up over
  `te_rampup_epochs` (0: half of training)."""
  rampup = config.te_rampup_epochs or max(config.num_epochs // 2, 1)
  return dataclasses.replace(pgd_at(config), ensemble=TemporalEnsemble(
      config.te_alpha, config.te_weight, rampup))


def fgsm_at(config: ml_collections.ConfigDict) -> Strategy:
  """FGSM-AT from a uniform random start with step 1.25 ε (Wong et al. 2020, Alg. 3)."""
  a = config.attack
  attack = fgsm(a.eps, step_size=1.25 * a.eps, random_start=True, keep="last")
  return Strategy(lambda logits_fn, x, y, key, clean_logits: attack(logits_fn, x, y, key).x_adv,
                  _cross_entropy_adv)


STRATEGIES = Registry("strategy", {
    "pgd_at": pgd_at, "trades": trades, "awp_pgd_at": awp_pgd_at, "awp_trades": awp_trades,
    "te": te, "fgsm_at": fgsm_at,
})
STRATEGY_NAMES = tuple(STRATEGIES)


def _validate_strategy_config(config: ml_collections.ConfigDict) -> None:
  """`get_strategy`'s check of the strategy and its inner attack."""
  STRATEGIES.lookup(config.strategy)
  a = config.attack
  for key, check in (("eps", check_config_radius), ("step_size", check_config_step_size)):
    if not a[key] > 0:
      fail(f"attack.{key}", a[key], "it must be in (0, 1] (pixel units; 8/255 for CIFAR)")
    check(f"attack.{key}", a[key], "linf")  # Above 1: "write 8/255, not 8".
  if not isinstance(a.steps, int) or a.steps < 1:
    fail("attack.steps", a.steps, "it must be an integer ≥ 1")
  check_choice("attack.batch_norm", a.batch_norm, ("train", "eval"))
  if config.trades_beta <= 0:
    fail("trades_beta", config.trades_beta, "it must be > 0 (6 in the paper)")
  if config.awp_gamma <= 0:
    fail("awp_gamma", config.awp_gamma, "it must be > 0 (5e-3 in the paper)")
  if not 0 <= config.te_alpha < 1:
    fail("te_alpha", config.te_alpha, "it must be in [0, 1) (0.9 in the paper)")
  if config.te_weight < 0:
    fail("te_weight", config.te_weight, "it must be ≥ 0 (300 in the paper)")


def get_strategy(config: ml_collections.ConfigDict) -> Strategy:
  """Checks the strategy keys of `config` and builds the strategy `config.strategy` names.

  Raises:
    ConfigError naming the first bad key, its value and what is allowed.
  """
  _validate_strategy_config(config)
  return STRATEGIES[config.strategy](config)
