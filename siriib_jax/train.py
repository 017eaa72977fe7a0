"""`train_and_evaluate(config, workdir)`: adversarial training with SiRIIB (paper §5.1).

The loop follows flax `examples/imagenet`: one jitted step (training/step.py) over a data
mesh, clu metric writers, orbax checkpoints that a restarted run resumes from — step,
parameters, BatchNorm statistics, optimiser state, TE's ensemble and the weight average;
the data order and the randomness are functions of (seed, step), so nothing else needs
saving — and a SIGTERM handler that checkpoints and exits cleanly.

With weight averaging (`weight_averaging.decay > 0`, docs/weight_averaging.md) validation,
the best checkpoint's selection and the final evaluation use the averaged weights, and the
summary's `weights` (and the evaluation report's `meta.weights`) says "averaged"; "raw"
otherwise. A checkpoint written without averaging resumes with it on, the average starting
at the restored parameters.
"""

import json
import os
import signal
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from siriib_jax import losses, parallel, run_config
from siriib_jax.checkpointing import Checkpoints
from siriib_jax.config_errors import UserError
from siriib_jax.config_validation import validate_config
from siriib_jax.data import InputPipeline, to_float
from siriib_jax.evaluation import evaluate_robustness, ib_path
from siriib_jax.models import create_model
from siriib_jax.training.strategies import get_strategy
from siriib_jax.runs import weights_name
from siriib_jax.training.state import create_train_state, evaluated_variables
from siriib_jax.training.step import make_eval_step, make_train_step


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss or a gradient became NaN or Inf; the last good checkpoint is kept."""


class _Preemption:
  """Turns SIGTERM into a flag that the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint and exiting after this step.")
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def _mean_metrics(history: list[dict]) -> dict:
  host = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def evaluate_validation(eval_step, state, data: InputPipeline, mesh, key) -> dict:
  """Clean and PGD accuracy (%) on the held-out validation split."""
  totals = {"clean": 0.0, "pgd": 0.0, "count": 0.0}
  for i, batch in enumerate(data.eval_batches("validation", batch_size=data.global_batch_size)):
    counts = eval_step(state, parallel.global_batch(batch, mesh), jax.random.fold_in(key, i))
    for k, v in jax.device_get(counts).items():
      totals[k] += float(v)
  count = max(totals["count"], 1.0)
  return {"clean": 100 * totals["clean"] / count, "pgd": 100 * totals["pgd"] / count}


def _final_evaluation(model, state, checkpoints: Checkpoints, config, data: InputPipeline,
                      workdir: str, writer, mesh) -> dict:
  """`config.final_eval_attacks` on a stratified subset of `config.final_eval_size` test
  points, for the best checkpoint by validation PGD (the last state without one; its
  `train_state.evaluated_variables`: the weight average when there is one), over the
  training mesh (with several hosts: each host its share of the points on its devices, the
  results gathered); the table is printed and written to `workdir/evaluation` by process 0,
  the progress through `writer`."""
  checkpoints.best.wait_until_finished()
  best = checkpoints.restore_best(state)
  chosen = best if best is not None else state
  report = evaluate_robustness(
      model, evaluated_variables(chosen), config, data,
      attacks=tuple(config.final_eval_attacks), subset_size=config.final_eval_size,
      directory=os.path.join(workdir, "evaluation"),
      meta={"checkpoint": "best" if best is not None else "last", "step": int(chosen.step),
            "weights": weights_name(config)},
      writer=writer, mesh=mesh)
  return report.to_json()


def _ib_path_health(model, state, data: InputPipeline) -> Optional[dict]:
  """SiRIIB's IB-path health (`ib_path.path_health`: dead units of c(·), f_spread) of the
  evaluated weights on the validation images, with a warning when the path has collapsed;
  None without a SiRIIB plug-in, a validation split, or with several hosts."""
  images = data.validation.image
  if getattr(model, "siriib", None) is None or not len(images) or jax.process_count() > 1:
    return None
  variables = jax.device_get(parallel.host_local(evaluated_variables(state)))
  health = ib_path.path_health(model, variables, np.asarray(to_float(images)))
  if health.collapsed:
    logging.warning(
        "SiRIIB's IB path has collapsed: %.0f%% of c(·)'s last-ReLU units are dead on the "
        "validation images, f_spread %.2g. The skip features are constants, so this model "
        "is its backbone plus fixed biases (README, Model).", 100 * health.dead_fraction,
        health.f_spread)
  return {**health.summary(), "points": int(len(images)), "on": "validation"}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config`'s model with its strategy; returns the run's summary (also written to
  `workdir/summary.json`).

  Raises:
    ConfigError: a bad config value (before anything is compiled).
    DatasetNotFoundError: the dataset is not prepared in `config.dataset.data_dir`.
    CheckpointError: an existing checkpoint in `workdir` cannot be read.
    NonFiniteLossError: the loss became NaN or Inf (the last good checkpoint is kept).
  """
  # Every check before anything is read or compiled: what no factory owns, then each
  # factory checks its own block (the model, the strategy, the dataset before reading it).
  validate_config(config)
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  model = create_model(config.model, config.dataset.image_size, dtype)
  strategy = get_strategy(config)
  data = InputPipeline(config.dataset, global_batch_size=config.batch_size, seed=config.seed)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  steps_per_epoch = data.steps_per_epoch
  num_steps = config.num_epochs * steps_per_epoch
  if config.max_steps > 0:
    num_steps = min(num_steps, config.max_steps)

  mesh = parallel.data_mesh()
  replicated = parallel.replicated(mesh)

  root_key = jax.random.key(config.seed)
  init_key, train_key, eval_key = jax.random.split(root_key, 3)
  init = jax.jit(lambda key: create_train_state(
      model, config, key, data.image_shape, steps_per_epoch, data.num_train_examples,
      strategy),
      out_shardings=replicated)
  abstract_state = jax.eval_shape(init, init_key)
  abstract_state = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
      abstract_state)

  checkpoints = Checkpoints(workdir, config.keep_checkpoints)
  state = checkpoints.restore_latest(abstract_state, start_average=True)
  if state is None:
    state = init(init_key)
  start_step = int(state.step)
  if jax.process_index() == 0:  # After the restore: a refused workdir is left as it was.
    run_config.save(config, workdir)  # For commands that analyse the run (--mode=paper).
  logging.info("Training %s with %s from step %d of %d (%d steps per epoch) on %d devices.",
               config.model.name, config.strategy, start_step, num_steps, steps_per_epoch,
               jax.device_count())

  train_step = jax.jit(make_train_step(model, strategy, config, steps_per_epoch),
                       in_shardings=(replicated, parallel.batch_sharded(mesh), replicated),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, config),
                      in_shardings=(replicated, parallel.batch_sharded(mesh), replicated),
                      out_shardings=replicated)

  writer = metric_writers.create_default_writer(workdir,
                                                just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  history, validation = [], {}
  status = "completed"
  started = time.time()
  with _Preemption() as preemption:
    for step in range(start_step, num_steps):
      batch = parallel.global_batch(data.train_batch(step), mesh)
      state, metrics = train_step(state, batch, train_key)
      history.append(metrics)
      done = step + 1
      end_of_epoch = done % steps_per_epoch == 0
      if done % config.log_every_steps == 0 or end_of_epoch or done == num_steps:
        summary = _mean_metrics(history)  # Waits for step `done` to finish.
        history = []
        # Only here, where the host has waited for the device: between two calls of
        # `progress` whole steps ran (elsewhere it would time the asynchronous dispatch).
        progress(done)
        if summary.pop("finite") < 1.0:
          checkpoints.close()
          raise NonFiniteLossError(
              f"The loss or a gradient became NaN/Inf before step {done}; the update was "
              f"skipped and the run stopped. The last good checkpoint in "
              f"{checkpoints.directory} is kept. Lower optimizer.learning_rate or "
              f"loss.lambda1, or try half_precision=False.")
        writer.write_scalars(done, {f"train/{k}": v for k, v in summary.items()})
      epoch = done // steps_per_epoch
      if end_of_epoch and epoch % config.eval_every_epochs == 0 and data.validation.label.size:
        validation = evaluate_validation(eval_step, state, data, mesh, eval_key)
        writer.write_scalars(done, {f"validation/{k}": v for k, v in validation.items()})
        checkpoints.save_best(done, state, validation["pgd"])
      periodic_save = config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0
      if end_of_epoch or periodic_save or done == num_steps or preemption.requested:
        checkpoints.save_last(done, state)
      if preemption.requested:
        status = "preempted"
        break
  summary = {"status": status, "step": int(state.step), "num_steps": num_steps,
             "epochs": int(state.step) / steps_per_epoch, "validation": validation,
             "best_validation_pgd": checkpoints.best_metric(),
             "train_seconds": time.time() - started, "weights": weights_name(config)}
  # Of the weights validated and evaluated (the average when on); None without SiRIIB.
  orth_error = losses.orthogonality_error(evaluated_variables(state)["params"])
  if orth_error is not None:
    summary["orthogonality_error"] = float(orth_error)  # Largest ‖W Wᵀ − I‖_F, paper §3.2.
  health = _ib_path_health(model, state, data)
  if health is not None:
    summary["ib_path"] = health
  if status == "completed" and config.final_eval_size:
    summary["final_evaluation"] = _final_evaluation(model, state, checkpoints, config, data,
                                                    workdir, writer, mesh)
  checkpoints.close()
  writer.flush()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, default=float)
  return summary
