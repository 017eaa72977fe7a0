"""Adversarial training strategies (paper §5.1, SPEC §4), looked up by `config.strategy`.

A strategy is the pair the train step composes with the SiRIIB terms:
  * an inner attack that makes `x_adv` from `(logits_fn, x, y, key, clean_logits)`;
  * its own per-example loss `L_ori`, from the model's outputs on `x_adv` and on `x`.
AWP (Wu et al. 2020) and TE (Dong et al. 2022) modify the step around these; the flags
say so and `train_step` implements them.
"""

import dataclasses
from typing import Callable, Optional

import jax.numpy as jnp
import ml_collections

from siriib_jax import losses
from siriib_jax.attacks.pgd import fgsm, pgd
from siriib_jax.config_errors import check_choice, fail


@dataclasses.dataclass(frozen=True)
class Strategy:
  """How one strategy trains.

  Attributes:
    attack: `(logits_fn, x, y, key, clean_logits) -> x_adv`, the inner maximisation.
    loss: `(logits_adv, logits_clean, y) -> (B,)`, `L_ori`; `logits_clean` is None unless
      `needs_clean` (or SiRIIB) asks for the clean forward pass.
    needs_clean: the loss uses the clean logits (TRADES).
    attack_uses_clean: the attack needs the clean logits (TRADES' KL inner loss).
    awp: perturb the weights adversarially before the update (AWP).
    temporal_ensembling: add TE's consistency term against an ensemble of past predictions.
  """
  attack: Callable
  loss: Callable[[jnp.ndarray, Optional[jnp.ndarray], jnp.ndarray], jnp.ndarray]
  needs_clean: bool = False
  attack_uses_clean: bool = False
  awp: bool = False
  temporal_ensembling: bool = False


def _pgd_ce(config: ml_collections.ConfigDict) -> Callable:
  """PGD on the cross-entropy from a uniform random start (Madry et al. 2018)."""
  a = config.attack
  attack = pgd(a.eps, a.step_size, a.steps, norm="linf", unroll=a.unroll)
  return lambda logits_fn, x, y, key, clean_logits: attack(logits_fn, x, y, key).x_adv


def _fgsm(config: ml_collections.ConfigDict) -> Callable:
  """FGSM from a uniform random start with step 1.25 ε (Wong et al. 2020, Alg. 3)."""
  a = config.attack
  attack = fgsm(a.eps, step_size=1.25 * a.eps, random_start=True)
  return lambda logits_fn, x, y, key, clean_logits: attack(logits_fn, x, y, key).x_adv


def _pgd_trades_kl(config: ml_collections.ConfigDict) -> Callable:
  """PGD on `KL(p_clean ‖ p_adv)` from `x + 0.001 · N(0, I)` (Zhang et al. 2019, Alg. 1)."""
  a = config.attack

  def attack(logits_fn, x, y, key, clean_logits):
    kl = lambda logits, _: losses.trades_kl(logits, clean_logits)
    run = pgd(a.eps, a.step_size, a.steps, norm="linf", loss=kl, start_noise=0.001,
              unroll=a.unroll)
    return run(logits_fn, x, y, key).x_adv

  return attack


def _cross_entropy_adv(logits_adv, logits_clean, y):
  del logits_clean
  return losses.cross_entropy(logits_adv, y)


def _trades(beta: float):
  def loss(logits_adv, logits_clean, y):
    return losses.cross_entropy(logits_clean, y) + beta * losses.trades_kl(logits_adv,
                                                                          logits_clean)
  return loss


STRATEGY_NAMES = ("pgd_at", "trades", "awp_pgd_at", "awp_trades", "te", "fgsm_at")


def get_strategy(config: ml_collections.ConfigDict) -> Strategy:
  """The strategy `config.strategy` names, with its hyper-parameters from `config`."""
  validate_strategy_config(config)
  name = config.strategy
  if name in ("trades", "awp_trades"):
    return Strategy(_pgd_trades_kl(config), _trades(config.trades_beta), needs_clean=True,
                    attack_uses_clean=True, awp=name == "awp_trades")
  if name == "fgsm_at":
    return Strategy(_fgsm(config), _cross_entropy_adv)
  return Strategy(_pgd_ce(config), _cross_entropy_adv, awp=name == "awp_pgd_at",
                  temporal_ensembling=name == "te")


def validate_strategy_config(config: ml_collections.ConfigDict) -> None:
  """Checks the strategy and its inner attack, before any compile."""
  check_choice("strategy", config.strategy, STRATEGY_NAMES)
  a = config.attack
  if not 0 < a.eps <= 1:
    fail("attack.eps", a.eps, "it must be in (0, 1] (pixel units; 8/255 for CIFAR)")
  if not 0 < a.step_size <= 1:
    fail("attack.step_size", a.step_size, "it must be in (0, 1] (pixel units)")
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
