"""The fused adversarial train step and the validation step.

`make_train_step` returns one pure function `(state, batch, key) -> (state, metrics)` that
holds, for one strategy and model: augmentation, the inner maximisation, the strategy's
loss plus the SiRIIB terms (paper §4.2), the strategy's weight perturbation (AWP) and
ensemble (TE) from `strategies.py`, a guard against non-finite updates, the optimiser
update and the weight average (`train_state.update_average`). `train.py` jits it once with
the state donated and sharded (`parallel.py`).
"""

import jax
import jax.numpy as jnp
import ml_collections

from siriib_jax import losses
from siriib_jax.attacks.pgd import pgd
from siriib_jax.data import augment, to_float
from siriib_jax.models.model_fn import logits_fn as model_logits_fn
from siriib_jax.numerics import all_finite
from siriib_jax.training.optimizer import learning_rate_schedule
from siriib_jax.training.strategies import Strategy
from siriib_jax.runs import averaging_enabled
from siriib_jax.training.state import TrainState, evaluated_variables, update_average


def make_train_step(model, strategy: Strategy, config: ml_collections.ConfigDict,
                    steps_per_epoch: int):
  """Builds `train_step(state, batch, key) -> (state, metrics)`.

  `batch`: `image` (B, H, W, C) uint8, `label` (B,), and `index` (B,) into the training
  set for TE. Randomness is `fold_in(key, state.step)`, so a resumed run repeats it.
  Metrics are batch means (with SiRIIB as a plug-in, also `f_spread` and
  `ib_dead_fraction`, the share of c(·)'s last-ReLU channels no clean image of the batch
  activates: the IB path's health, `evaluation/ib_path.py`); `finite` is 0 when the update was skipped for a non-finite
  loss, gradient or updated parameter (the state then stays as it was).

  With `model.siriib.placement = "purifier"` the inner attack and `L_ori` see the plain
  backbone, and the SR purifier is fitted on the same step's x_adv with
  `λ1 L_svd(x_avg(x_adv), x) + λ2 R_τ` (`losses.purifier_objective`; metrics `svd_loss`,
  `r_tau`, `orth_error`); no gradient crosses between the two (paper App. C.5).

  With `model.siriib.guard = "variance"` the loss adds `loss.variance_weight ×
  losses.variance_hinge(f_i(x_clean), loss.variance_target)` (metric `variance_hinge`).

  With SiRIIB as a plug-in, `L_info`'s `f_i(x_clean)` comes from SiRIIB alone
  (`Classifier.siriib_features`) unless the strategy needs the clean logits (TRADES): the
  backbone's running statistics then move with x_adv only, as the plain model's do.

  With `weight_averaging.decay > 0` the state's `averaged_params` is updated with the new
  parameters — the real weights, never AWP's perturbed copy (only the gradient is taken
  there) — and, like the rest of the state, kept as it was when the update is skipped.
  """
  siriib = config.model.siriib
  use_siriib = siriib.enabled and siriib.placement == "plugin"
  # The detached SR purifier (paper App. C.5): fitted with L_svd on this step's x_adv; its
  # x_avg feeds nothing, so the backbone's gradient is L_ori's alone.
  use_purifier = siriib.enabled and siriib.placement == "purifier"
  # The IB path's variance guard (`losses.variance_hinge` on f_i(x_clean), VICReg's term).
  variance_guard = use_siriib and siriib.guard == "variance"
  schedule = learning_rate_schedule(config, steps_per_epoch)
  lambda1, lambda2 = config.loss.lambda1, config.loss.lambda2
  ensemble = strategy.ensemble
  averaging = averaging_enabled(config)

  def forward(params, batch_stats, x):
    out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                               mutable=["batch_stats"])
    return out, updates["batch_stats"]

  def clean_siriib_forward(params, batch_stats, x, method):
    """The clean pass with SiRIIB's c(x_avg) captured: (output, batch_stats, c's last ReLU)."""
    out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                               method=method, mutable=["batch_stats", "intermediates"])
    return (out, updates["batch_stats"],
            updates["intermediates"]["siriib"]["extractor_output"][0])

  def objective(params, state, x, x_adv, y, index, epoch, with_terms):
    with_siriib, with_purifier = with_terms and use_siriib, with_terms and use_purifier
    stats = state.batch_stats
    out_clean, features_clean, extracted = None, None, None
    if strategy.needs_clean and with_siriib:
      out_clean, stats, extracted = clean_siriib_forward(params, stats, x, None)
      features_clean = out_clean.features
    elif strategy.needs_clean:
      out_clean, stats = forward(params, stats, x)
    elif with_siriib:  # L_info's f_i^clean: SiRIIB alone, the backbone's statistics untouched.
      features_clean, stats, extracted = clean_siriib_forward(params, stats, x,
                                                              "siriib_features")
    out_adv, stats = forward(params, stats, x_adv)
    loss_ori = strategy.loss(out_adv.logits, out_clean.logits if out_clean else None, y)
    metrics = {"loss_ori": jnp.mean(loss_ori),
               "accuracy_adv": jnp.mean(jnp.argmax(out_adv.logits, -1) == y)}
    if ensemble is not None:
      loss_ori = loss_ori + ensemble.consistency(out_adv.logits, state.ensemble, index, epoch)
    if with_purifier:
      svd = losses.svd_loss(out_adv.purified, x, config.loss.svd_eps)
      orth = losses.orthogonality_penalty(params)
      metrics.update(svd_loss=jnp.mean(svd), r_tau=orth,
                     orth_error=losses.orthogonality_error(params))
      total = losses.purifier_objective(loss_ori, svd, orth, lambda1, lambda2)
      return total, (stats, out_adv.logits, metrics)
    if not with_siriib:
      return jnp.mean(loss_ori), (stats, out_adv.logits, metrics)
    terms = losses.siriib_terms(params, x, out_adv.x_avg, out_adv.features, features_clean,
                                config.loss.svd_eps)
    metrics.update(l_svd=jnp.mean(terms.svd), l_info=jnp.mean(terms.info), r_tau=terms.orth,
                   orth_error=losses.orthogonality_error(params),
                   f_spread=losses.feature_spread(features_clean),
                   ib_dead_fraction=losses.dead_unit_fraction(extracted))
    total = losses.siriib_objective(loss_ori, terms, lambda1, lambda2)
    if variance_guard:
      hinge = losses.variance_hinge(features_clean, config.loss.variance_target)
      metrics.update(variance_hinge=hinge)
      total = total + config.loss.variance_weight * hinge
    return total, (stats, out_adv.logits, metrics)

  def train_step(state: TrainState, batch, key):
    step_key = jax.random.fold_in(key, state.step)
    augment_key, attack_key = jax.random.split(step_key)
    x = augment(augment_key, batch["image"])
    y, index = batch["label"], batch.get("index")

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits_fn = model_logits_fn(model, variables, config.attack.batch_norm)
    clean_logits = jax.lax.stop_gradient(logits_fn(x)) if strategy.attack_uses_clean else None
    x_adv = jax.lax.stop_gradient(strategy.attack(logits_fn, x, y, attack_key, clean_logits))
    epoch = state.step // steps_per_epoch

    params = state.params
    if strategy.weight_perturbation is not None:
      awp_grads, _ = jax.grad(objective, has_aux=True)(params, state, x, x_adv, y, index,
                                                       epoch, False)
      params = strategy.weight_perturbation(params, awp_grads)

    (total, (stats, logits_adv, metrics)), grads = jax.value_and_grad(
        objective, has_aux=True)(params, state, x, x_adv, y, index, epoch,
                                 use_siriib or use_purifier)
    new_state = state.apply_gradients(grads=grads, batch_stats=stats)
    if ensemble is not None:
      new_state = new_state.replace(ensemble=ensemble.update(state.ensemble, index,
                                                             logits_adv))
    if averaging:  # `new_state.params`: the updated real weights (AWP perturbs a copy).
      new_state = new_state.replace(averaged_params=update_average(
          state.averaged_params, new_state.params, state.step, config))

    finite = jnp.isfinite(total) & all_finite(grads) & all_finite(new_state.params)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics.update(loss=total, finite=finite.astype(jnp.float32),
                   learning_rate=schedule(state.step))
    return new_state, metrics

  return train_step


def make_eval_step(model, config: ml_collections.ConfigDict):
  """Builds `eval_step(state, batch, key) -> counts` for validation: clean and PGD-k
  (`config.eval_pgd_steps`, the training ε and α, random start) accuracy, as sums over the
  batch's real examples (`mask`), plus the count. The weights are
  `train_state.evaluated_variables(state)`: the weight average when the state has one."""
  a = config.attack
  attack = pgd(a.eps, a.step_size, config.eval_pgd_steps, norm="linf", unroll=False)

  def eval_step(state: TrainState, batch, key):
    logits_fn = model_logits_fn(model, evaluated_variables(state))
    x, y, mask = to_float(batch["image"]), batch["label"], batch["mask"].astype(jnp.float32)
    logits = logits_fn(x)
    # A point with a NaN or infinite logit is no correct prediction (`attacks.base`).
    clean = (jnp.argmax(logits, -1) == y) & jnp.all(jnp.isfinite(logits), -1)
    robust = clean & ~attack(logits_fn, x, y, key).success
    return {"clean": jnp.sum(clean * mask), "pgd": jnp.sum(robust * mask),
            "count": jnp.sum(mask)}

  return eval_step
