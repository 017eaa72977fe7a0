"""`evaluate_robustness`: every attack of `config.evaluation` on a model and its variables,
the adaptive table, AutoAttack's cascade and the masking checklist (paper §5.1, §5.5,
SPEC §5). See docs/evaluation.md.

A point counts as robust to an attack when the model classifies both x and the attack's
x_adv correctly (x is itself in the ball), so every robust accuracy is ≤ the clean one.
Every attack runs only on the points still robust (`batching.run_attack`), logs its
progress (`progress.ProgressLog`) and, with `evaluation.save_examples`, leaves its x_adv,
predictions and flags in `<directory>/<attack>.npz` (`save_examples`).

With several hosts each evaluates its share of the points (`load_share`), every point keyed
by its global index, and the per-point results are gathered (`hosts.gather_points`)
before anything is counted: the report is the one-host report, on every host, and only
process 0 writes files.
"""

import os
import re
from typing import Optional, Sequence, Union

import jax
import ml_collections
import numpy as np
from absl import logging

from siriib_jax.data import InputPipeline
from siriib_jax.evaluation import adaptive as adaptive_lib
from siriib_jax.evaluation import ib_path
from siriib_jax.evaluation.checklist import run_checklist
from siriib_jax.evaluation.report import Report, Row, to_markdown, write_report
from siriib_jax import parallel
from siriib_jax.evaluation.batching import (Outcome, attack_key, clean_pass, evaluation_mesh,
                                            predict, run_attack, select_points)
from siriib_jax.evaluation.hosts import (Hosts, Share, current_hosts, gather_max, gather_points,
                                         select_share, share_index)
from siriib_jax.attacks.autoattack import ComponentResult
from siriib_jax.attacks.threat_model import check_images
from siriib_jax.evaluation.progress import ProgressLog
from siriib_jax.evaluation.attack_specs import (SPECIAL_NAMES, AttackSpec, build_attack,
                                                checklist_spec, parse_spec,
                                                validate_threat_models)
from siriib_jax.models.model_fn import logits_fn, outputs_fn

Points = Union[InputPipeline, tuple[np.ndarray, np.ndarray]]


def load_points(data: Points, evaluation: ml_collections.ConfigDict,
                subset_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """Float32 images (N, H, W, C) in [0, 1] and labels (N,): `data`'s test split (all, or
  a stratified subset of `subset_size`, default `evaluation.subset_size`, drawn with
  `evaluation.seed`; with several hosts, this host's share), or the given
  `(images, labels)` (uint8 or float)."""
  if isinstance(data, InputPipeline):
    size = evaluation.subset_size if subset_size is None else subset_size
    images, labels = select_points(data, size, evaluation.seed)
  else:
    images, labels = check_images(data[0], "data's images"), data[1]
  return _as_float(images, labels)


def _as_float(images, labels) -> tuple[np.ndarray, np.ndarray]:
  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  return images.astype(np.float32), np.asarray(labels, np.int32)


def load_share(data: Points, evaluation: ml_collections.ConfigDict,
               subset_size: Optional[int] = None, hosts: Optional[Hosts] = None) -> Share:
  """This host's share of the points of `load_points`, with their global indices.

  An `InputPipeline`'s share is what its `eval_batches` gives this host
  (`hosts.select_share`); given `(images, labels)`, the same on every host, are shared
  out in the same layout with a global batch of `evaluation.batch_size` rounded down to a
  multiple of the host count (`hosts.share_index`). On one host: every point, index
  0 … N − 1.

  Returns:
    `Share(images float32 (N_p, H, W, C) in [0, 1], labels int32 (N_p,), index (N_p,),
    total N)`.
  """
  hosts = current_hosts() if hosts is None else hosts
  if isinstance(data, InputPipeline):
    size = evaluation.subset_size if subset_size is None else subset_size
    share = select_share(data, size, evaluation.seed)
    return Share(*_as_float(share.images, share.labels), share.index, share.total)
  images, labels = check_images(data[0], "data's images"), data[1]  # Whole, on every host.
  total = len(labels)
  if hosts.count == 1:
    index = np.arange(total)
  else:
    batch = hosts.count * max(1, evaluation.batch_size // hosts.count)
    index = share_index(total, batch, hosts.index, hosts.count)
    images, labels = np.asarray(images)[index], np.asarray(labels)[index]
  return Share(*_as_float(images, labels), index, total)


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
                  clean_prediction: np.ndarray, batch_size: int, mesh=None,
                  adversarial_prediction: Optional[np.ndarray] = None) -> None:
  """Writes one attack's per-point results to `path` (NumPy `.npz`):

  * `x_adv`: (N, H, W, C) float32 in [0, 1], the attack's point (x itself where it did not
    run: clean errors; for AutoAttack also the points no component broke);
  * `clean_prediction`, `adversarial_prediction`: (N,) int64, the model's classes on x and
    on x_adv (`predict`, in batches of `batch_size`; `batching.NO_PREDICTION`, −1, where a
    logit is not finite: never a correct class, and never counted as an attack's success);
  * `robust`: (N,) bool, classified correctly at x and not broken by the attack (the
    report's robust accuracy is its mean);
  * `label`: (N,) int32; `index`: (N,) int64, the point's position among the evaluated
    points (`load_points` order).

  `robust` is the attack's own verdict; re-predicting x_adv gives
  `robust == (clean_prediction == label) & (adversarial_prediction == label)` except for a
  point whose x_adv lies within float rounding of a decision boundary (FAB-T's minimal
  perturbations end right past it).

  `adversarial_prediction`, if given, is written instead of predicting x_adv (several
  hosts: each predicted its share before the gathering).
  """
  robust = (clean_prediction == y) & ~outcome.success
  if adversarial_prediction is None:
    adversarial_prediction = predict(fn, outcome.x_adv, batch_size, mesh)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  np.savez(path, x_adv=outcome.x_adv, clean_prediction=clean_prediction,
           adversarial_prediction=adversarial_prediction, robust=robust,
           label=y, index=np.arange(len(y)))


def _ib_path(model, variables, evaluation, x, y, names, rows, mesh, several) -> Optional[dict]:
  """SiRIIB's IB-path health and skip ablation (`ib_path.skip_ablation`) on the evaluated
  points, reusing the rows' own accuracies; None for a model without a SiRIIB plug-in or
  with `evaluation.skip_ablation = ()`. Not measured with several hosts (each holds a share
  of the points, and the mean f_i is over all of them)."""
  if not names:
    return None
  if several:
    return {"measured": False, "reason": "several hosts; run --mode=eval on one host"}
  own = {r.name: r.accuracy for r in rows if r.name in names and r.group != "checklist"}
  result = ib_path.skip_ablation(model, variables, evaluation, x, y, names, own=own, mesh=mesh)
  if result["health"]["ib_collapsed"]:
    logging.warning(
        "SiRIIB's IB path has collapsed on these %d points: %.0f%% of c(·)'s last-ReLU units "
        "are dead, f_spread %.2g; the skip features f_i are constants and the model is its "
        "backbone plus fixed biases (README, Model).", len(y),
        100 * result["health"]["ib_dead_fraction"], result["health"]["f_spread"])
  return {"measured": True, **result}


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
                        only_robust: bool = True, hosts: Optional[Hosts] = None) -> Report:
  """Evaluates `model` with `variables` under `config.evaluation`'s attacks.

  Args:
    model: a Flax module, `model.apply(variables, x, train=False)` -> logits (B, K) or a
      `ModelOutput` (x in [0, 1], NHWC).
    variables: its variables (`{'params', 'batch_stats'}`).
    config: the experiment config; reads `config.evaluation`.
    data: an `InputPipeline` (its test split) or `(images (N, H, W, C), labels (N,))`,
      the images uint8 or float in [0, 1] (with several hosts, the same on every host).
    attacks: names (see `attack_specs`; `clean`, `adaptive`), default `evaluation.attacks`.
    subset_size: for an `InputPipeline`, overrides `evaluation.subset_size` (0 = all).
    directory: if given, `robustness.json` / `.md` are written there and the table
      printed; with `evaluation.save_examples`, also `<attack>.npz` per attack
      (`save_examples`). Only process 0 writes and prints.
    meta: extra entries for the report's `meta` (e.g. checkpoint and step).
    writer: a clu `MetricWriter` for the progress scalars (`progress.ProgressLog`); the
      progress is logged (absl, INFO) in any case.
    mesh: each chunk of points (AutoAttack's included) is sharded over this mesh's `data`
      axis (its devices on this host: `batching.evaluation_mesh`), the variables
      replicated; default `batching.evaluation_mesh()`, training's data mesh over this
      host's devices. A point's result does not depend on it.
    only_robust: False attacks every point (each target, query and AutoAttack component
      included), for checking that the default — only the points still robust — gives the
      same robust flags.
    hosts: the processes (default `hosts.current_hosts()`). With several, each
      evaluates its share (`load_share`) with every point keyed by its global index, and
      the per-point results (robust flags, predictions, AutoAttack's per-component flags;
      x_adv only with `save_examples`) are gathered before the report is built: every
      host returns the report one host would, and times are the slowest host's.

  Returns:
    The `Report`; `meta.class_counts` has one count per class of the model's logits.
  Raises:
    ValueError: given images that are not finite or not in [0, 1] (0–255 floats, or
      normalised outside the model: `threat_model.check_images`), or (ConfigError) a
      radius or step size of `config.evaluation` outside [0, 1] pixel units (8 for 8/255:
      `attack_specs.validate_threat_models`), or (ConfigError) a name of `attacks` the
      evaluation cannot run (`attack_specs.parse_spec`), before anything is compiled.
  """
  evaluation = config.evaluation
  attacks = tuple(evaluation.attacks if attacks is None else attacks)
  hosts = current_hosts() if hosts is None else hosts
  x, y, index, total = load_share(data, evaluation, subset_size, hosts)
  validate_threat_models(evaluation, x.shape[1:])  # ε in pixel units, before any compile.
  # Every name parsed (`attack_specs.EXECUTION`) before the first attack runs.
  specs = {name: parse_spec(name, evaluation) for name in attacks if name not in SPECIAL_NAMES}
  ablation = tuple(evaluation.get("skip_ablation", ())) \
      if getattr(model, "siriib", None) is not None else ()
  for name in ablation:
    if name != "clean":
      parse_spec(name, evaluation)
  large_eps_spec = checklist_spec(evaluation)
  several, writes = hosts.count > 1, directory is not None and hosts.index == 0
  gather = lambda tree: gather_points(tree, index, total, hosts)
  mesh = evaluation_mesh(mesh)
  variables = jax.device_put(parallel.host_local(variables), parallel.replicated(mesh))
  fn, batch_size = logits_fn(model, variables), evaluation.batch_size
  # This host's points (`local_*`), then every host's in the global order.
  local_prediction, local_nonfinite = clean_pass(fn, x, y, batch_size, mesh)
  local_correct = local_prediction == y
  clean_prediction, labels, nonfinite = gather((local_prediction, y, local_nonfinite))
  clean_correct = clean_prediction == labels
  rows, cascades = [], {}
  log = ProgressLog(writer, f"host {hosts.index + 1}/{hosts.count}" if several else "")
  save = evaluation.save_examples and directory is not None

  def attack_row(group, name, attack_id, label, family, spec, attack, fn_attacked):
    outcome = run_attack(attack, fn_attacked, x, y, attack_key(evaluation.seed, name),
                         batch_size, local_correct, index=index, only_robust=only_robust,
                         mesh=mesh, progress=log.attack(name))
    local = {"success": outcome.success,
             "components": {c: (part.attacked, part.success)
                            for c, part in (outcome.components or {}).items()}}
    if save and several:  # One host: `save_examples` predicts x_adv itself.
      local.update(x_adv=outcome.x_adv,
                   adversarial=predict(fn, outcome.x_adv, batch_size, mesh))
    gathered = gather(local)
    seconds = gather_max(outcome.seconds, hosts)
    components = {c: ComponentResult(*gathered["components"][c],
                                     gather_max(part.seconds, hosts))
                  for c, part in (outcome.components or {}).items()}
    robust = clean_correct & ~gathered["success"]
    if several:
      log.gathered(name, total, int(robust.sum()), seconds, hosts.count)
    if save and writes:
      save_examples(examples_path(directory, name),
                    Outcome(gathered.get("x_adv", outcome.x_adv), gathered["success"],
                            components or None, seconds),
                    fn, labels, clean_prediction, batch_size, mesh,
                    adversarial_prediction=gathered.get("adversarial"))
    rows.append(_row(group, name, attack_id, label, family, spec, robust, seconds))
    if components:
      cascades[name] = _cascade(components, clean_correct)

  for name in attacks:
    if name == "clean":
      rows.append(_row("clean", "clean", "clean", "Clean", "clean", None, clean_correct, 0.0))
    elif name != "adaptive":
      spec = specs[name]
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
  if large_eps_spec is not None:
    spec = large_eps_spec
    attack_row("checklist", f"large-eps-{spec.attack}", spec.attack, spec.label, spec.family,
               spec, build_attack(spec, evaluation), fn)

  ib = _ib_path(model, variables, evaluation, x, y, ablation, rows, mesh, several)

  report_meta = {"num_points": int(total), "seed": int(evaluation.seed),
                 "selection": _selection(data, evaluation, subset_size),
                 # One count per class of the model (K: its logits' last dimension).
                 "class_counts": np.bincount(
                     labels, minlength=jax.eval_shape(fn, x[:1]).shape[-1]).tolist(),
                 # The gradient attacks step with these entries as 0 (`finite_gradient`).
                 "nonfinite_gradient_points": int(nonfinite.sum()),
                 # What ran: `attacks` and `subset_size` override the config's defaults.
                 "evaluation": {**evaluation.to_dict(), "attacks": list(attacks),
                                "subset_size": int(evaluation.subset_size if subset_size is None
                                                   else subset_size)},
                 **(meta or {})}
  if ib is not None:
    report_meta["ib_path"] = ib
  if several:
    report_meta["processes"] = hosts.count
  report = Report(report_meta, rows, cascades,
                  run_checklist(rows, cascades, evaluation.checklist))
  if writes:
    write_report(report, directory)
    print(to_markdown(report))
  return report
