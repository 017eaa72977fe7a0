"""Checkpoints in `workdir/checkpoints`: the last few in `last/`, the best by validation
PGD accuracy in `best/` (robust overfitting, Rice et al. 2020), both orbax
`CheckpointManager`s. Saving is asynchronous; `close()` waits for it."""

import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from siriib_jax.numerics import all_finite


class CheckpointError(RuntimeError):
  """A checkpoint could not be read; it is left untouched."""


class Checkpoints:
  """The run's checkpoint managers.

  Args:
    workdir: the run's directory (made absolute: orbax needs that).
    keep: how many of the last checkpoints to keep.
  """

  def __init__(self, workdir: str, keep: int):
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.directory = root
    self.last = ocp.CheckpointManager(
        os.path.join(root, "last"), options=ocp.CheckpointManagerOptions(max_to_keep=keep))
    self.best = ocp.CheckpointManager(
        os.path.join(root, "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["pgd"],
                                             best_mode="max"))
    self._best_pgd = None

  def best_metric(self) -> float:
    """The validation PGD accuracy of the best checkpoint so far (−inf if none)."""
    if self._best_pgd is None:
      step = self.best.best_step()
      metrics = None if step is None else self.best.metrics(step)
      self._best_pgd = -np.inf if not metrics else float(metrics["pgd"])
    return self._best_pgd

  def restore_latest(self, abstract_state):
    """The latest `last/` checkpoint as `abstract_state`'s structure and shardings, or None.

    Raises:
      CheckpointError: the checkpoint exists but cannot be read.
    """
    step = self.last.latest_step()
    if step is None:
      return None
    return self._restore(self.last, step, abstract_state)

  def restore_best(self, abstract_state):
    """The best checkpoint, or None when there is none."""
    step = self.best.best_step()
    return None if step is None else self._restore(self.best, step, abstract_state)

  @staticmethod
  def _restore(manager, step, abstract_state):
    """Restores `step` as `abstract_state` (None: as saved, a tree of dicts)."""
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as error:  # pylint: disable=broad-except
      path = os.path.join(str(manager.directory), str(step))
      raise CheckpointError(
          f"The checkpoint of step {step} in {path} cannot be read ({type(error).__name__}: "
          f"{error}). It was left as it is. Move it aside to resume from an earlier "
          f"checkpoint, or use a new --workdir to start afresh.") from error

  def save_last(self, step: int, state) -> None:
    """Saves `state` as the latest checkpoint; refuses a non-finite state."""
    if not bool(all_finite(state.params)):
      raise FloatingPointError(f"Refusing to checkpoint non-finite parameters at step {step}.")
    self.last.save(step, args=ocp.args.StandardSave(state))

  def save_best(self, step: int, state, pgd_accuracy: float) -> bool:
    """Saves `state` in `best/` if `pgd_accuracy` beats the best so far; says whether."""
    if pgd_accuracy <= self.best_metric():
      return False
    self.best.save(step, args=ocp.args.StandardSave(state), metrics={"pgd": pgd_accuracy})
    self._best_pgd = pgd_accuracy
    return True

  def close(self) -> None:
    self.last.wait_until_finished()
    self.best.wait_until_finished()
    self.last.close()
    self.best.close()


def load_variables(workdir: str, which: str = "best") -> tuple[dict, int]:
  """The model variables `{'params', 'batch_stats'}` of a run, for evaluation.

  Args:
    workdir: the training run's directory.
    which: "best" (highest validation PGD accuracy; falls back to "last" when the run has
      no validation split) or "last".
  Returns:
    (variables, step).
  Raises:
    CheckpointError: there is no checkpoint, or it cannot be read.
  """
  if which not in ("best", "last"):
    raise ValueError(f"which must be 'best' or 'last', got {which!r}")
  root = os.path.join(os.path.abspath(workdir), "checkpoints")
  for name in ((which, "last") if which == "best" else (which,)):
    directory = os.path.join(root, name)
    if not os.path.isdir(directory):
      continue
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, best_fn=(lambda m: m["pgd"]) if name == "best" else None))
    step = manager.best_step() if name == "best" else manager.latest_step()
    if step is None:
      continue
    restored = Checkpoints._restore(manager, step, None)  # pylint: disable=protected-access
    return {"params": restored["params"], "batch_stats": restored["batch_stats"]}, step
  raise CheckpointError(f"No checkpoint in {root}: train first, or pass the --workdir of a "
                        f"training run.")
