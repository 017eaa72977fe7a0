"""Training losses: the strategies' own losses and the SiRIIB terms (paper §4.2, SPEC §3).

    L = L_ori + λ1 (L_svd + L_info) + λ2 R_τ

Everything is per example (B,) where a batch is involved, so strategies can weight or mask
examples; `d` is the mean squared error **[choice]** (the paper writes ‖·‖₂; at the MSE
scale λ1 = 20 is the best value of Table 2).
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from siriib_jax.models.siriib import sr_weight_matrices
from siriib_jax.svd import svd_parts


def _per_example_mse(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  # In float32 whatever the operands' dtypes (the f_i are bf16 under half_precision with
  # "exact" orthogonality: `models.create_model`), before the subtraction.
  diff = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.mean(diff * diff, axis=tuple(range(1, diff.ndim)))


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """(B,) softmax cross-entropy of logits (B, K) against integer labels (B,)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def trades_kl(logits_adv: jnp.ndarray, logits_clean: jnp.ndarray) -> jnp.ndarray:
  """(B,) `KL(p_clean ‖ p_adv)` summed over classes: TRADES' robust term (Zhang et al. 2019,
  eq. 5), which PyTorch writes as `KLDivLoss(log_softmax(adv), softmax(clean))`."""
  log_p_clean = jax.nn.log_softmax(logits_clean.astype(jnp.float32))
  log_p_adv = jax.nn.log_softmax(logits_adv.astype(jnp.float32))
  return jnp.sum(jnp.exp(log_p_clean) * (log_p_clean - log_p_adv), axis=-1)


def svd_loss(x_avg: jnp.ndarray, x_clean: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """(B,) `L_svd = d(Σ_avg, Σ) + d(U_avg V_avgᵀ, U Vᵀ) + d(x_avg, x_clean)`.

  Args:
    x_avg: (B, H, W, 3), SiRIIB's output for the adversarial input.
    x_clean: (B, H, W, 3), the clean images `U Σ Vᵀ` (per channel).
    eps: gradient regularisation of the orthogonal factor (`svd.svd_parts`).
  """
  sigma_avg, uv_avg = svd_parts(x_avg, eps)
  sigma, uv = svd_parts(x_clean, eps)
  return (_per_example_mse(sigma_avg, sigma) + _per_example_mse(uv_avg, uv) +
          _per_example_mse(x_avg, x_clean))


def info_loss(features_adv: Sequence[jnp.ndarray],
              features_clean: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """(B,) `L_info = Σ_i d(f_i(x_adv), f_i(x_clean))`; gradients flow through both sides."""
  return sum(_per_example_mse(a, c) for a, c in zip(features_adv, features_clean, strict=True))


def dead_unit_fraction(activations: jnp.ndarray) -> jnp.ndarray:
  """The fraction of channels of `activations` (N, H, W, C), a ReLU's output, that no image
  activates at any position (max over N, H, W is ≤ 0): 1.0 when every unit is dead, as when
  SiRIIB's IB path has collapsed (`feature_spread`). Scalar float32; a diagnostic."""
  alive = jnp.max(activations, axis=tuple(range(activations.ndim - 1))) > 0
  return 1.0 - jnp.mean(alive.astype(jnp.float32))


def feature_spread(features: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Scalar diagnostic of SiRIIB's skip features: the standard deviation over the batch of
  each `f_i` (B, H_i, W_i, C_i), averaged over positions and channels, then over the `f_i`.

  0 (up to rounding) when the `f_i` no longer depend on the input: the IB path has
  collapsed to constant biases (e.g. every unit of c(·)'s last ReLU dead), which `L_info`
  alone rewards (it is 0 for input-independent `f_i`); measured in quickstart and
  reproduction runs (RESULTS.md, "Collapse of the skip features"). Not a loss term;
  float32; 0 for no features.
  """
  spreads = [jnp.mean(jnp.std(f.astype(jnp.float32), axis=0)) for f in features]
  return sum(spreads) / len(spreads) if spreads else jnp.zeros((), jnp.float32)


def variance_hinge(features: Sequence[jnp.ndarray], target: float) -> jnp.ndarray:
  """Scalar VICReg variance term (Bardes et al., ICLR 2022, eq. 1) on SiRIIB's skip features:
  `mean_i mean_{h,w,c} max(0, target − sqrt(Var_batch f_i[h,w,c] + 1e-4))`, each `f_i`
  (B, H_i, W_i, C_i). 0 while every feature varies over the batch by at least `target`
  (feature units), positive and pushing the spread up below it: a guard against the collapse
  of the IB path (`model.siriib.guard = "variance"`). float32; 0 for no features."""
  hinges = [jnp.mean(jax.nn.relu(target - jnp.sqrt(jnp.var(f.astype(jnp.float32), axis=0)
                                                   + 1e-4)))
            for f in features]
  return sum(hinges) / len(hinges) if hinges else jnp.zeros((), jnp.float32)


def _gram_residuals(params) -> list:
  """`W Wᵀ − I` of every SR block's W (`models.siriib.sr_weight_matrices`)."""
  residuals = []
  for w in sr_weight_matrices(params).values():
    gram = w @ w.T
    residuals.append(gram - jnp.eye(gram.shape[0]))
  return residuals


def orthogonality_penalty(params) -> jnp.ndarray:
  """`R_τ = Σ_blocks ‖W Wᵀ − I‖²_F` over every SR block's W, the (in_channels ×
  orth_channels) matrix of its 1×1 conv as the forward pass uses it (SPEC §1.1; in
  "exact" mode the polar factor of the stored parameter, so R_τ ≈ 0). Scalar; 0 without
  SiRIIB."""
  total = jnp.zeros((), jnp.float32)
  for residual in _gram_residuals(params):
    total = total + jnp.sum(residual ** 2)
  return total


def orthogonality_error(params) -> jnp.ndarray | None:
  """The largest `‖W Wᵀ − I‖_F` over the SR blocks (0 when every W has orthonormal rows;
  paper §3.2's isometry). Scalar float32; None for a model without SiRIIB."""
  residuals = _gram_residuals(params)
  if not residuals:
    return None
  return jnp.max(jnp.stack([jnp.sqrt(jnp.sum(r ** 2)) for r in residuals]))


class SiriibTerms(NamedTuple):
  """The SiRIIB regularisers of one batch: `svd` and `info` are (B,), `orth` a scalar."""
  svd: jnp.ndarray
  info: jnp.ndarray
  orth: jnp.ndarray


def siriib_terms(params, x_clean, x_avg_adv, features_adv, features_clean,
                 svd_eps: float = 1e-6) -> SiriibTerms:
  """`L_svd`, `L_info` and `R_τ` for a batch (paper §4.2).

  Args:
    params: the model's parameters (for `R_τ`).
    x_clean: (B, H, W, 3) clean images.
    x_avg_adv: (B, H, W, 3) SiRIIB's x_avg computed from the adversarial images.
    features_adv, features_clean: the `f_i` from the adversarial and the clean images.
  """
  return SiriibTerms(svd_loss(x_avg_adv, x_clean, svd_eps),
                     info_loss(features_adv, features_clean), orthogonality_penalty(params))


def siriib_objective(loss_ori: jnp.ndarray, terms: SiriibTerms, lambda1: float,
                     lambda2: float) -> jnp.ndarray:
  """Scalar `L = mean(L_ori) + λ1 mean(L_svd + L_info) + λ2 R_τ` (paper §4.2)."""
  return (jnp.mean(loss_ori) + lambda1 * jnp.mean(terms.svd + terms.info) +
          lambda2 * terms.orth)


def purifier_objective(loss_ori: jnp.ndarray, svd: jnp.ndarray, orth: jnp.ndarray,
                       lambda1: float, lambda2: float) -> jnp.ndarray:
  """Scalar `mean(L_ori) + λ1 mean(L_svd) + λ2 R_τ` of `model.siriib.placement =
  "purifier"` (paper App. C.5): `L_ori` (B,) the plain backbone's, `L_svd` (B,) the
  purifier's `svd_loss(x_avg(x_adv), x)`, `R_τ` the purifier's `orthogonality_penalty`.
  The two parts share no parameter and no activation, so the gradient of the sum is
  `∇ L_ori` on the backbone and `∇ (λ1 L_svd + λ2 R_τ)` on the SR blocks."""
  return jnp.mean(loss_ori) + lambda1 * jnp.mean(svd) + lambda2 * orth
