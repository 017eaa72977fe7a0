"""Checkpoints in `workdir/checkpoints`: the last few in `last/`, the best by validation
PGD accuracy in `best/` (robust overfitting, Rice et al. 2020), both orbax
`CheckpointManager`s. Saving is asynchronous; `close()` waits for it.

Every read restores onto the current devices, whatever the number of devices that wrote
the checkpoint: training saves its state replicated over its data mesh, and orbax, given
no target, would rebuild that mesh (and fail on a machine with another device count). A
resumed run passes its own abstract state; `load_variables` (evaluation) builds its target
from the checkpoint's metadata, replicated over the current devices. Before restoring, the
checkpoint's tree (key paths, shapes, dtypes) is compared with the target's, and a
difference (another model, another mode of a module, another optimiser) is reported by
key path rather than as orbax's error.

With weight averaging (`weight_averaging.decay > 0`) the train state, and so every
checkpoint, holds `averaged_params` beside `params`; `load_variables(..., averaged=True)`
returns them as the variables' `params`. A checkpoint written without averaging resumes
with it turned on: the average starts at the restored parameters (`restore_latest`'s
`start_average`; docs/weight_averaging.md).
"""

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from siriib_jax import parallel
from siriib_jax.config_errors import UserError
from siriib_jax.models.classifier import placement_of
from siriib_jax.numerics import all_finite


class CheckpointError(UserError, RuntimeError):
  """A checkpoint could not be read; it is left untouched."""


def _path_name(path) -> str:
  """'params/siriib/sr0/orthogonal/kernel' for a JAX key path (dict keys, attributes and
  sequence indices alike: orbax stores dataclasses and named tuples as dicts, tuples as
  lists)."""
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _leaf_specs(tree) -> dict:
  """{key path: (shape, dtype name)} of the array leaves of `tree` (arrays, abstract arrays
  or orbax `ArrayMetadata`)."""
  specs = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      specs[_path_name(path)] = (tuple(leaf.shape), str(leaf.dtype))
  return specs


def describe_mismatch(found, expected, found_name: str = "the checkpoint",
                      expected_name: str = "the model", limit: int = 6) -> Optional[str]:
  """What differs between two trees of arrays, by key path; None when they agree.

  Args:
    found, expected: trees whose leaves have `.shape` and `.dtype` (arrays,
      `jax.ShapeDtypeStruct`s, orbax metadata).
    found_name, expected_name: how the message calls them.
    limit: at most this many paths are listed per kind of difference.

  Returns:
    None, or one sentence per kind of difference, joined by "; ", e.g. "only the checkpoint
    has params/siriib/sr0/orthogonal_raw/kernel (1, 1, 3, 12); only the model has
    params/siriib/sr0/orthogonal/kernel (1, 1, 3, 12)" or "shapes or dtypes differ:
    params/backbone/head/kernel: the checkpoint (64, 10) float32, the model (64, 100)
    float32". The model's variables (params, batch_stats) are listed first.
  """
  found, expected = _leaf_specs(found), _leaf_specs(expected)

  order = lambda p: (not p.startswith(("params", "batch_stats")), p)  # Variables first.

  def listing(paths, specs):
    shown = [f"{p} {specs[p][0]}" for p in sorted(paths, key=order)[:limit]]
    more = len(paths) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")

  only_found = found.keys() - expected.keys()
  only_expected = expected.keys() - found.keys()
  differ = sorted((p for p in found.keys() & expected.keys() if found[p] != expected[p]),
                  key=order)
  lines = []
  if only_found:
    lines.append(f"only {found_name} has {listing(only_found, found)}")
  if only_expected:
    lines.append(f"only {expected_name} has {listing(only_expected, expected)}")
  if differ:
    lines.append("shapes or dtypes differ: " + "; ".join(
        f"{p}: {found_name} {found[p][0]} {found[p][1]}, {expected_name} {expected[p][0]} "
        f"{expected[p][1]}" for p in differ[:limit]) +
                 (f" and {len(differ) - limit} more" if len(differ) > limit else ""))
  return "; ".join(lines) if lines else None


def _params_of(tree):
  """The `params` subtree of a train state, its checkpoint metadata or a variables dict."""
  if hasattr(tree, "params"):
    return tree.params
  return tree.get("params", {}) if hasattr(tree, "get") else {}


def placement_hint(found, expected, found_name: str = "the checkpoint",
                   expected_name: str = "the model") -> str:
  """A sentence naming `model.siriib.placement` ("plugin" / "purifier", by the top-level
  parameter key: `models.classifier.placement_of`) or `model.siriib.enabled` when the two
  trees (train states, their metadata, or variables dicts) differ in it; "" otherwise."""
  found, expected = placement_of(_params_of(found)), placement_of(_params_of(expected))
  if found == expected:
    return ""
  subject = found_name[:1].upper() + found_name[1:]
  if found is not None and expected is not None:
    return (f" {subject} holds the SR blocks as model.siriib.placement={found!r}, "
            f"{expected_name} as {expected!r}: set --config.model.siriib.placement={found} "
            f"to read it.")
  setting = (f"model.siriib.enabled=True, placement={found!r}" if found is not None
             else "model.siriib.enabled=False")
  return f" {subject} was written with {setting}."


def guard_hint(found, expected, found_name: str = "the checkpoint",
               expected_name: str = "the model") -> str:
  """A sentence naming `model.siriib.guard` when one tree has c(·)'s affine-free last
  BatchNorm (guard "affine_free_bn") and the other does not; "" otherwise."""
  def affine_free(tree) -> bool:  # Its running statistics are named `…_affine_free`.
    return any("affine_free" in _path_name(path)
               for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])
  found_free, expected_free = affine_free(found), affine_free(expected)
  if found_free == expected_free:
    return ""
  guard = lambda free: "'affine_free_bn'" if free else "'none' or 'variance'"
  subject = found_name[:1].upper() + found_name[1:]
  return (f" {subject} was written with model.siriib.guard={guard(found_free)}, "
          f"{expected_name} has model.siriib.guard={guard(expected_free)}: set "
          f"--config.model.siriib.guard to the checkpoint's guard to read it.")


AVERAGE_KEY = "averaged_params"  # The train state's field of the weight average.


def _has_average(tree) -> bool:
  """Whether a train state, its checkpoint metadata or a restored dict holds a weight
  average (array leaves under `averaged_params`)."""
  average = (getattr(tree, AVERAGE_KEY, None) if not isinstance(tree, dict)
             else tree.get(AVERAGE_KEY))
  return bool(_leaf_specs(average)) if average is not None else False


def averaging_hint(found, expected, found_name: str = "the checkpoint",
                   expected_name: str = "this run") -> str:
  """A sentence naming `weight_averaging.decay` when one of the two trees (train states or
  their metadata) holds a weight average and the other does not; "" otherwise."""
  found_average, expected_average = _has_average(found), _has_average(expected)
  if found_average == expected_average:
    return ""
  subject = found_name[:1].upper() + found_name[1:]
  if found_average:
    return (f" {subject} was written with weight averaging and {expected_name} has it off: "
            f"set --config.weight_averaging.decay to the run's value (its config.json) to "
            f"read it.")
  return (f" {subject} was written without weight averaging and {expected_name} has it on "
          f"(config.weight_averaging.decay > 0).")


def _replicated_here() -> jax.sharding.Sharding:
  """Replicated over every current device (the data mesh of this machine)."""
  return parallel.replicated(parallel.data_mesh())


def _manager(directory: str, **options) -> ocp.CheckpointManager:
  """A manager of `StandardSave` checkpoints that can also read their metadata."""
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(**options),
                               item_handlers=ocp.StandardCheckpointHandler())


class Checkpoints:
  """The run's checkpoint managers.

  Args:
    workdir: the run's directory (made absolute: orbax needs that).
    keep: how many of the last checkpoints to keep.
  """

  def __init__(self, workdir: str, keep: int):
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.directory = root
    self.last = _manager(os.path.join(root, "last"), max_to_keep=keep)
    self.best = _manager(os.path.join(root, "best"), max_to_keep=1,
                         best_fn=lambda m: m["pgd"], best_mode="max")
    self._best_pgd = None

  def best_metric(self) -> float:
    """The validation PGD accuracy of the best checkpoint so far (−inf if none)."""
    if self._best_pgd is None:
      step = self.best.best_step()
      metrics = None if step is None else self.best.metrics(step)
      self._best_pgd = -np.inf if not metrics else float(metrics["pgd"])
    return self._best_pgd

  def restore_latest(self, abstract_state, start_average: bool = False):
    """The latest `last/` checkpoint as `abstract_state`'s structure and shardings, or None.

    Args:
      abstract_state: the run's train state of `jax.ShapeDtypeStruct`s.
      start_average: when `abstract_state` holds a weight average (`averaged_params`) and
        the checkpoint none (written with weight averaging off), restore the rest and start
        the average at the restored parameters (a copy, same sharding) instead of refusing.

    Raises:
      CheckpointError: the checkpoint exists but cannot be read, or holds another tree than
        `abstract_state` (the message lists the key paths and shapes that differ).
    """
    step = self.last.latest_step()
    if step is None:
      return None
    if start_average and _has_average(abstract_state):
      self.last.wait_until_finished()
      try:
        saved = getattr(self.last.item_metadata(step), "tree", None)
      except Exception:  # pylint: disable=broad-except
        saved = None  # `_restore` below reports it.
      if saved is not None and not _has_average(saved):
        state = self._restore(self.last, step,
                              abstract_state.replace(**{AVERAGE_KEY: None}))
        logging.warning("The checkpoint of step %d was written without weight averaging: "
                        "the average starts at its parameters.", step)
        return state.replace(**{AVERAGE_KEY: jax.tree.map(jnp.copy, state.params)})
    return self._restore(self.last, step, abstract_state)

  def restore_best(self, abstract_state):
    """The best checkpoint, or None when there is none (errors as `restore_latest`)."""
    step = self.best.best_step()
    return None if step is None else self._restore(self.best, step, abstract_state)

  @staticmethod
  def _restore(manager, step, abstract_state):
    """Restores `step` onto `abstract_state`'s structure, shapes and shardings; None: onto
    the checkpoint's own structure, replicated over the current devices."""
    path = os.path.join(str(manager.directory), str(step))
    unreadable = ("It was left as it is. Move it aside to resume from an earlier "
                  "checkpoint, or use a new --workdir to start afresh.")
    manager.wait_until_finished()  # A save of this step may still be under way.
    try:
      saved = manager.item_metadata(step)
    except Exception as error:  # pylint: disable=broad-except
      raise CheckpointError(f"The checkpoint of step {step} in {path} has no readable "
                            f"metadata ({type(error).__name__}: {error}). {unreadable}") from error
    saved = getattr(saved, "tree", saved)
    if saved is None:
      raise CheckpointError(f"The checkpoint of step {step} in {path} has no readable "
                            f"metadata. {unreadable}")
    if abstract_state is None:
      here = _replicated_here()
      abstract_state = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here)
          if hasattr(m, "shape") and hasattr(m, "dtype") else m, saved)
    else:
      mismatch = describe_mismatch(saved, abstract_state, "the checkpoint", "this run")
      if mismatch:
        raise CheckpointError(
            f"The checkpoint of step {step} in {path} was written by another model or "
            f"configuration than this run's: {mismatch}."
            f"{placement_hint(saved, abstract_state, 'the checkpoint', 'this run')}"
            f"{guard_hint(saved, abstract_state, 'the checkpoint', 'this run')}"
            f"{averaging_hint(saved, abstract_state, 'the checkpoint', 'this run')} "
            f"It was left as it is. Use the "
            f"config it was trained with (e.g. the same model, model.siriib settings and "
            f"optimizer), or a new --workdir to start afresh.")
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as error:  # pylint: disable=broad-except
      raise CheckpointError(
          f"The checkpoint of step {step} in {path} cannot be read ({type(error).__name__}: "
          f"{error}). {unreadable}") from error

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


def load_variables(workdir: str, which: str = "best", expected: Optional[Any] = None,
                   averaged: bool = False) -> tuple[dict, int]:
  """The model variables `{'params', 'batch_stats'}` of a run, for evaluation, replicated
  over the current devices whatever the device count of the run that saved them.

  Args:
    workdir: the training run's directory.
    which: "best" (highest validation PGD accuracy; falls back to "last" when the run has
      no validation split) or "last".
    expected: optional, the variables the configured model expects: a tree
      `{'params', 'batch_stats'}` of arrays or `jax.ShapeDtypeStruct`s (e.g.
      `jax.eval_shape(model.init, key, images)`). When given, a checkpoint of another
      model or mode is refused with the key paths and shapes that differ.
    averaged: True: `params` are the checkpoint's weight average (`averaged_params`, a run
      trained with `weight_averaging.decay > 0`; `runs.weights_name(config)` says
      which a config asks for); False: the raw parameters. `batch_stats` are the run's
      running statistics either way.
  Returns:
    (variables, step).
  Raises:
    CheckpointError: there is no checkpoint, it cannot be read, its variables differ
      from `expected`, or `averaged` is True and it holds no weight average.
  """
  if which not in ("best", "last"):
    raise ValueError(f"which must be 'best' or 'last', got {which!r}")
  root = os.path.join(os.path.abspath(workdir), "checkpoints")
  for name in ((which, "last") if which == "best" else (which,)):
    directory = os.path.join(root, name)
    if not os.path.isdir(directory):
      continue
    manager = _manager(directory, read_only=True,
                       best_fn=(lambda m: m["pgd"]) if name == "best" else None)
    step = manager.best_step() if name == "best" else manager.latest_step()
    if step is None:
      continue
    restored = Checkpoints._restore(manager, step, None)  # pylint: disable=protected-access
    if averaged and not _has_average(restored):
      raise CheckpointError(
          f"The checkpoint of step {step} in {os.path.join(directory, str(step))} holds no "
          f"weight average: its run was trained with weight_averaging.decay = 0. Evaluate "
          f"its raw weights with --config.weight_averaging.decay=0, or train with "
          f"weight_averaging.decay > 0.")
    if not averaged and _has_average(restored):
      logging.warning("The checkpoint of step %d holds a weight average; these are its raw "
                      "weights (set weight_averaging.decay > 0 to read the average).", step)
    params = restored[AVERAGE_KEY] if averaged else restored["params"]
    variables = {"params": params, "batch_stats": restored["batch_stats"]}
    if expected is not None:
      expected = {"params": expected["params"], "batch_stats": expected.get("batch_stats", {})}
      mismatch = describe_mismatch(variables, expected, "the checkpoint", "the model")
      if mismatch:
        raise CheckpointError(
            f"The checkpoint of step {step} in {os.path.join(directory, str(step))} holds "
            f"the variables of another model or mode than the configured one: {mismatch}."
            f"{placement_hint(variables, expected)}{guard_hint(variables, expected)} "
            f"Evaluate it with the config it was "
            f"trained with (same model, model.siriib settings and dataset).")
    return variables, step
  raise CheckpointError(f"No checkpoint in {root}: train first, or pass the --workdir of a "
                        f"training run.")
