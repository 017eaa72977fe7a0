"""`evaluate_robustness`: every attack of `config.evaluation` on a model and its variables,
the adaptive table, AutoAttack's cascade and the masking checklist (paper §5.1, §5.5,
SPEC §5). See docs/evaluation.md.

A point counts as robust to an attack when the model classifies both x and the attack's
x_adv correctly (x is itself in the ball), so every robust accuracy is ≤ the clean one.
Every attack runs only on the points still robust (`batching.run_attack`), logs its
progress (`progress.ProgressLog`) and, with `evaluation.save_examples`, leaves its x_adv,
predictions and flags in `<directory>/<attack>.npz` (`save_examples`).
"""

import os
import re
from typing import Optional, Sequence, Union

import jax
import ml_collections
import numpy as np

from siriib_jax.data import InputPipeline
from siriib_jax.evaluation import adaptive as adaptive_lib
from siriib_jax.evaluation.checklist import run_checklist
from siriib_jax.evaluation.report import Report, Row, to_markdown, write_report
from siriib_jax import parallel
from siriib_jax.evaluation.batching import (Outcome, attack_key, evaluation_mesh, predict,
                                            run_attack, select_points)
from siriib_jax.evaluation.progress import ProgressLog
from siriib_jax.evaluation.attack_specs import AttackSpec, build_attack, parse_spec
from siriib_jax.models.model_fn import logits_fn, outputs_fn

Points = Union[InputPipeline, tuple[np.ndarray, np.ndarray]]


def load_points(data: Points, evaluation: ml_collections.ConfigDict,
                subset_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """Float32 images (N, H, W, C) in [0, 1] and labels (N,): `data`'s test split (all, or
  a stratified subset of `subset_size`, default `evaluation.subset_size`, drawn with
  `evaluation.seed`), or the given `(images, labels)` (uint8 or float)."""
  if isinstance(data, InputPipeline):
    size = evaluation.subset_size if subset_size is None else subset_size
    images, labels = select_points(data, size, evaluation.seed)
  else:
    images, labels = data
  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  return images.astype(np.float32), np.asarray(labels, np.int32)


def has_siriib(model, variables, x: np.ndarray) -> bool:
  """Whether the model returns SiRIIB's `x_avg` (shape inference only, no compute)."""
  output = jax.eval_shape(outputs_fn(model, variables), x[:1])
  return getattr(output, "x_avg", None) is not None


def _row(group, name, attack, label, family, spec: Optional[AttackSpec], robust, seconds):
  steps = spec.steps if spec is not None and spec.steps else None
  return Row(group=group, name=name, attack=attack, label=label, family=family,
             norm=spec.norm if spec else None, eps=spec.eps if spec else None,
             step_size=spec.step_size if spec else None, steps=steps,
             accuracy=float(np.mean(robust)) if robust.size else 0.0,
             robust=int(robust.sum()), total=int(robust.size), seconds=float(seconds))


def _cascade(components, clean_correct) -> dict:
  """AutoAttack's components in order: points attacked, broken, accuracy after, seconds."""
  robust, out = int(clean_correct.sum()), {}
  for name, part in components.items():
    robust -= int(part.success.sum())
    out[name] = {"attacked": int(part.attacked.sum()), "broken": int(part.success.sum()),
                 "accuracy_after": robust / len(clean_correct), "seconds": part.seconds}
  return out


def examples_path(directory: str, name: str) -> str:
  """`<directory>/<name>.npz`, with any character other than letters, digits, `-`, `_`
  and `.` of the attack's name replaced by `_` (`adaptive:ce+svd` → `adaptive_ce_svd`)."""
  return os.path.join(directory, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".npz")


def save_examples(path: str, outcome: Outcome, fn, y: np.ndarray,
                  clean_prediction: np.ndarray, batch_size: int, mesh=None) -> None:
  """Writes one attack's per-point results to `path` (NumPy `.npz`):

  * `x_adv`: (N, H, W, C) float32 in [0, 1], the attack's point (x itself where it did not
    run: clean errors; for AutoAttack also the points no component broke);
  * `clean_prediction`, `adversarial_prediction`: (N,) int64, the model's classes on x and
    on x_adv (`predict`, in batches of `batch_size`);
  * `robust`: (N,) bool, classified correctly at x and not broken by the attack (the
    report's robust accuracy is its mean);
  * `label`: (N,) int32; `index`: (N,) int64, the point's position among the evaluated
    points (`load_points` order).

  `robust` is the attack's own verdict; re-predicting x_adv gives
  `robust == (clean_prediction == label) & (adversarial_prediction == label)` except for a
  point whose x_adv lies within float rounding of a decision boundary (FAB-T's minimal
  perturbations end right past it).
  """
  robust = (clean_prediction == y) & ~outcome.success
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  np.savez(path, x_adv=outcome.x_adv, clean_prediction=clean_prediction,
           adversarial_prediction=predict(fn, outcome.x_adv, batch_size, mesh), robust=robust,
           label=y, index=np.arange(len(y)))


def _selection(data: Points, evaluation, subset_size: Optional[int]) -> str:
  if not isinstance(data, InputPipeline):
    return "given points"
  size = evaluation.subset_size if subset_size is None else subset_size
  return f"stratified subset, seed {evaluation.seed}" if size else "all test points"


def evaluate_robustness(model, variables, config: ml_collections.ConfigDict, data: Points,
                        attacks: Optional[Sequence[str]] = None,
                        subset_size: Optional[int] = None,
                        directory: Optional[str] = None,
                        meta: Optional[dict] = None, writer=None, mesh=None,
                        only_robust: bool = True) -> Report:
  """Evaluates `model` with `variables` under `config.evaluation`'s attacks.

  Args:
    model: a Flax module, `model.apply(variables, x, train=False)` -> logits (B, K) or a
      `ModelOutput` (x in [0, 1], NHWC).
    variables: its variables (`{'params', 'batch_stats'}`).
    config: the experiment config; reads `config.evaluation`.
    data: an `InputPipeline` (its test split) or `(images (N, H, W, C), labels (N,))`.
    attacks: names (see `attack_specs`; `clean`, `adaptive`), default `evaluation.attacks`.
    subset_size: for an `InputPipeline`, overrides `evaluation.subset_size` (0 = all).
    directory: if given, `robustness.json` / `.md` are written there and the table
      printed; with `evaluation.save_examples`, also `<attack>.npz` per attack
      (`save_examples`).
    meta: extra entries for the report's `meta` (e.g. checkpoint and step).
    writer: a clu `MetricWriter` for the progress scalars (`progress.ProgressLog`); the
      progress is logged (absl, INFO) in any case.
    mesh: each chunk of points (AutoAttack's included) is sharded over this mesh's `data`
      axis, the variables replicated; default `batching.evaluation_mesh()`, training's
      data mesh over this host's devices. A point's result does not depend on it.
    only_robust: False attacks every point (each target, query and AutoAttack component
      included), for checking that the default — only the points still robust — gives the
      same robust flags.

  Returns:
    The `Report`.
  """
  evaluation = config.evaluation
  attacks = tuple(evaluation.attacks if attacks is None else attacks)
  x, y = load_points(data, evaluation, subset_size)
  mesh = evaluation_mesh() if mesh is None else mesh
  variables = jax.device_put(variables, parallel.replicated(mesh))
  fn, batch_size = logits_fn(model, variables), evaluation.batch_size
  clean_prediction = predict(fn, x, batch_size, mesh)
  clean_correct = clean_prediction == y
  rows, cascades, log = [], {}, ProgressLog(writer)

  def attack_row(group, name, attack_id, label, family, spec, attack, fn_attacked):
    outcome = run_attack(attack, fn_attacked, x, y, attack_key(evaluation.seed, name),
                         batch_size, clean_correct, only_robust=only_robust, mesh=mesh,
                         progress=log.attack(name))
    if evaluation.save_examples and directory is not None:
      save_examples(examples_path(directory, name), outcome, fn, y, clean_prediction,
                    batch_size, mesh)
    rows.append(_row(group, name, attack_id, label, family, spec,
                     clean_correct & ~outcome.success, outcome.seconds))
    if outcome.components:
      cascades[name] = _cascade(outcome.components, clean_correct)

  for name in attacks:
    if name == "clean":
      rows.append(_row("clean", "clean", "clean", "Clean", "clean", None, clean_correct, 0.0))
    elif name != "adaptive":
      spec = parse_spec(name, evaluation)
      attack_row(spec.norm, name, spec.attack, spec.label, spec.family, spec,
                 build_attack(spec, evaluation), fn)
  if "adaptive" in attacks and has_siriib(model, variables, x):
    threat, steps = evaluation.linf, evaluation.adaptive_steps
    spec = AttackSpec(f"pgd{steps}", "linf", threat.eps, threat.step_size)
    attack = adaptive_lib.adaptive_pgd(threat.eps, threat.step_size, steps,
                                       restarts=evaluation.restarts, unroll=evaluation.unroll)
    for loss in adaptive_lib.TABLE4_LOSSES:
      target = adaptive_lib.Target(outputs_fn(model, variables),
                                   adaptive_lib.loss_weights(loss))
      attack_row("adaptive", f"adaptive:{loss}", loss, adaptive_lib.loss_label(loss),
                 "adaptive", spec, attack, target)
  checks = evaluation.checklist
  if checks.large_eps > 0:
    spec = AttackSpec(checks.large_eps_attack, "linf", checks.large_eps, checks.large_eps / 4)
    attack_row("checklist", f"large-eps-{spec.attack}", spec.attack, spec.label, spec.family,
               spec, build_attack(spec, evaluation), fn)

  report_meta = {"num_points": int(len(y)), "seed": int(evaluation.seed),
                 "selection": _selection(data, evaluation, subset_size),
                 "class_counts": np.bincount(y).tolist(),
                 "evaluation": evaluation.to_dict(), **(meta or {})}
  report = Report(report_meta, rows, cascades,
                  run_checklist(rows, cascades, evaluation.checklist))
  if directory is not None:
    write_report(report, directory)
    print(to_markdown(report))
  return report
