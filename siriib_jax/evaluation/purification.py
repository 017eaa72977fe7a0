"""Grey-box purification (paper App. C.5, Table 8): how much adversarial information the
isolated SR blocks remove.

The run is a purifier run (`model.siriib.placement = "purifier"`, docs/purification.md):
a plain backbone adversarially trained, and beside it SR blocks fitted with `L_svd` on that
training's adversarial examples, never connected to the backbone. Table 8 is then, on a
set of test points:

* clean: the backbone's accuracy on x and on x_avg(x);
* per attack (PGD-20, PGD-100, C&W-100, AutoAttack, …): x_adv is generated against the
  backbone ALONE (the attacker does not know the SR blocks: a grey-box attack), and the
  backbone's accuracy is measured on x_adv and on x_avg(x_adv).

Accuracies are plain (`argmax = y` on the image given to the backbone). The attacks run as
in `evaluate_robustness` (`batching.run_attack`, keys `attack_key(seed, name)`): only the
points the backbone classifies correctly are attacked, so a clean error's x_adv is x
itself, and the x_adv column equals the attack's own robust accuracy (both are reported:
`accuracy_adv` re-predicts x_adv, `robust_accuracy` is the attack's verdict).

`predict_functions` gives the two classifiers of the table — the backbone alone, and the
purifier then the backbone — as `x -> logits` functions (also for common corruptions,
Table 9); `purify_images` gives x_avg itself.
"""

import dataclasses
import functools
import time
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from siriib_jax import markdown, parallel
from siriib_jax.attacks.gradients import num_classes
from siriib_jax.attacks.threat_model import check_images
from siriib_jax.evaluation.attack_specs import build_attack, parse_spec
from siriib_jax.evaluation.batching import (attack_key, evaluation_mesh, map_batches, predict,
                                            run_attack)
from siriib_jax.evaluation.progress import ProgressLog
from siriib_jax.data import InputPipeline
from siriib_jax.evaluation.robustness import Points, load_points

# Table 8's attacks, in its column order (config names, `attack_specs`).
TABLE8_ATTACKS = ("pgd20", "pgd100", "cw100", "autoattack")
TABLE8_CAPTION = ("Table 8. The clean accuracy and robust accuracy under the input of x, "
                  "x_adv, and x_avg, respectively.")


@dataclasses.dataclass(frozen=True)
class PurifierFn:
  """`(variables, x (B, H, W, 3) float32 in [0, 1]) -> logits (B, K) float32` of a
  classifier with an SR purifier (`models.classifier.Classifier`): the backbone alone
  (`purify=False`), or the backbone on the purifier's x_avg of x (`purify=True`).
  BatchNorm uses the running statistics. Hashable (by the module), so that
  `jax.tree_util.Partial(PurifierFn(model, ...), variables)` is a jit argument."""
  model: nn.Module
  purify: bool = False

  def __call__(self, variables, x):
    x = jnp.asarray(x, jnp.float32)
    if self.purify:
      x = self.model.apply(variables, x, train=False, method="purify")
    return self.model.apply(variables, x, train=False,
                            method="backbone_logits").astype(jnp.float32)


def _check_purifier(model, variables) -> None:
  """Raises ValueError unless `model` is a classifier with an SR purifier whose variables
  hold it (shape inference only)."""
  if getattr(model, "purifier", None) is None or getattr(model, "siriib", None) is not None:
    raise ValueError("purification needs a classifier built with model.siriib.enabled=True "
                     "and model.siriib.placement='purifier' (models.create_model); this one "
                     "has no SR purifier")
  if "purifier" not in variables.get("params", {}):
    raise ValueError("the variables hold no 'purifier' parameters: load the checkpoint of "
                     "a purifier run (model.siriib.placement='purifier')")


def predict_functions(model, variables) -> tuple[jax.tree_util.Partial,
                                                  jax.tree_util.Partial]:
  """The two classifiers of Table 8 (and Table 9) as `x -> logits` functions.

  Args:
    model: a classifier with an SR purifier (`create_model` with `model.siriib.placement =
      "purifier"`).
    variables: its `{'params', 'batch_stats'}` (e.g. `checkpointing.load_variables`).
  Returns:
    (backbone alone, purifier then backbone): each `x (B, H, W, 3) float32 in [0, 1] ->
    logits (B, K) float32`, a `jax.tree_util.Partial` with the variables as leaves (a jit
    argument; attacks and `batching.predict` take it as is).
  Raises:
    ValueError: the model or the variables have no SR purifier.
  """
  _check_purifier(model, variables)
  return (jax.tree_util.Partial(PurifierFn(model, purify=False), variables),
          jax.tree_util.Partial(PurifierFn(model, purify=True), variables))


@dataclasses.dataclass(frozen=True)
class _XAvgFn:
  """`(variables, x) -> x_avg`, the purifier alone (running BatchNorm statistics)."""
  model: nn.Module

  def __call__(self, variables, x):
    return self.model.apply(variables, jnp.asarray(x, jnp.float32), train=False,
                            method="purify")


@jax.jit
def _apply(fn, x):
  return fn(x)


def purify_images(model, variables, images: np.ndarray, batch_size: int = 256,
                  mesh=None) -> np.ndarray:
  """The purifier's x_avg of `images` (N, H, W, 3) (uint8, or float in [0, 1]), in batches
  of `batch_size` (sharded over `mesh`'s `data` axis when given; the last batch padded as
  in `batching.predict`): (N, H, W, 3) float32 in (0, 1).

  Raises:
    ValueError: the model or the variables have no SR purifier, or `images` are not finite
      or not in [0, 1] (`threat_model.check_images`).
  """
  _check_purifier(model, variables)
  x = check_images(images, "images")
  fn = jax.tree_util.Partial(_XAvgFn(model), variables)
  return map_batches(functools.partial(_apply, fn), (x,), batch_size, mesh)


def _selection(data: Points, evaluation, subset_size: Optional[int]) -> str:
  """How the points were chosen, for the table's note."""
  if not isinstance(data, InputPipeline):
    return "given points"
  size = evaluation.subset_size if subset_size is None else subset_size
  return f"stratified subset, seed {evaluation.seed}" if size else "all test points"


def purification_table(model, variables, evaluation: ml_collections.ConfigDict,
                       data: Points, attacks: Sequence[str] = TABLE8_ATTACKS,
                       subset_size: Optional[int] = None, mesh=None, writer=None) -> dict:
  """Table 8 (paper App. C.5): the backbone's accuracy on x, x_avg(x), and per attack on
  x_adv and x_avg(x_adv), x_adv made against the backbone alone (module doc).

  Args:
    model: a classifier with an SR purifier (`model.siriib.placement = "purifier"`).
    variables: its `{'params', 'batch_stats'}`.
    evaluation: `config.evaluation`: the threat models (`linf`, `l2`), `restarts`,
      `unroll`, `square_queries`, `batch_size`, `seed` (the attacks' keys, and the subset),
      `subset_size`, as for `evaluate_robustness`.
    data: an `InputPipeline` (its test split) or `(images (N, H, W, 3), labels (N,))`,
      uint8 or float in [0, 1].
    attacks: config names of registry attacks (`pgd20`, `cw100`, `autoattack`, `l2-pgd20`,
      …; not `clean`, which is always the first row, nor `adaptive`).
    subset_size: for an `InputPipeline`, overrides `evaluation.subset_size` (0 = all).
    mesh: chunks of points sharded over its `data` axis; default
      `batching.evaluation_mesh()`.
    writer: a clu `MetricWriter` for the attacks' progress scalars (`ProgressLog`).

  Returns:
    A plain dict (JSON-serialisable): `table` ("Table 8"), `caption`, `num_points`, `seed`,
    `selection`, `class_counts` (one per class of the backbone); `clean`: {`accuracy_x`,
    `accuracy_x_avg`, `correct_x`, `correct_x_avg`}; `attacks`: per attack, in order,
    {`name`, `label`, `norm`, `eps`, `step_size`, `accuracy_adv` (backbone on x_adv),
    `accuracy_purified` (backbone on x_avg(x_adv)), `robust_accuracy` (the attack's own
    verdict: correct on x, not broken), `correct_adv`, `correct_purified`, `recovered`
    (points correct on x and wrong on x_adv that x_avg(x_adv) puts right), `lost` (correct
    on x_adv, wrong on x_avg(x_adv)), `mean_linf_change` (mean over points of
    max |x_avg(x_adv) − x_adv|), `seconds`}. Accuracies in [0, 1].
  Raises:
    ValueError: the model or variables have no SR purifier, or `clean` / `adaptive` is
      among `attacks`, or given images not finite or not in [0, 1]
      (`threat_model.check_images`).
    ConfigError: an unknown attack name, or a radius or step size of its threat model
      outside [0, 1] pixel units (8 for 8/255).
  """
  _check_purifier(model, variables)
  bad = [name for name in attacks if name in ("clean", "adaptive")]
  if bad:
    raise ValueError(f"attacks {bad}: Table 8 always has the clean row, and the adaptive "
                     f"attacks target a SiRIIB plug-in, not a purifier")
  specs = [parse_spec(name, evaluation) for name in attacks]  # Every name checked first.
  x, y = load_points(data, evaluation, subset_size)
  mesh = evaluation_mesh() if mesh is None else mesh
  variables = jax.device_put(variables, parallel.replicated(mesh))
  backbone_fn, purified_fn = predict_functions(model, variables)
  batch_size = evaluation.batch_size
  clean_correct = predict(backbone_fn, x, batch_size, mesh) == y
  purified_clean = predict(purified_fn, x, batch_size, mesh) == y
  log = ProgressLog(writer)
  rows = []
  for name, spec in zip(attacks, specs):
    outcome = run_attack(build_attack(spec, evaluation), backbone_fn, x, y,
                         attack_key(evaluation.seed, name), batch_size, clean_correct,
                         mesh=mesh, progress=log.attack(f"purification/{name}"))
    started = time.time()
    adv_correct = predict(backbone_fn, outcome.x_adv, batch_size, mesh) == y
    purified_correct = predict(purified_fn, outcome.x_adv, batch_size, mesh) == y
    x_avg = purify_images(model, variables, outcome.x_adv, batch_size, mesh)
    change = np.abs(x_avg - outcome.x_adv).reshape(len(y), -1).max(axis=1)
    robust = clean_correct & ~outcome.success
    rows.append({
        "name": name, "label": spec.label, "norm": spec.norm, "eps": spec.eps,
        "step_size": spec.step_size,
        "accuracy_adv": float(np.mean(adv_correct)),
        "accuracy_purified": float(np.mean(purified_correct)),
        "robust_accuracy": float(np.mean(robust)),
        "correct_adv": int(adv_correct.sum()), "correct_purified": int(purified_correct.sum()),
        "recovered": int((clean_correct & ~adv_correct & purified_correct).sum()),
        "lost": int((adv_correct & ~purified_correct).sum()),
        "mean_linf_change": float(np.mean(change)) if len(y) else 0.0,
        "seconds": float(outcome.seconds + time.time() - started)})
  return {
      "table": "Table 8", "caption": TABLE8_CAPTION, "num_points": int(len(y)),
      "seed": int(evaluation.seed), "selection": _selection(data, evaluation, subset_size),
      # One count per class of the backbone (K: its logits' last dimension).
      "class_counts": np.bincount(y, minlength=num_classes(backbone_fn, x[:1])).tolist(),
      "clean": {"accuracy_x": float(np.mean(clean_correct)),
                "accuracy_x_avg": float(np.mean(purified_clean)),
                "correct_x": int(clean_correct.sum()),
                "correct_x_avg": int(purified_clean.sum())},
      "attacks": rows,
  }


def _percent(value: float) -> str:
  return f"{100 * value:.2f}"


def to_markdown(table: dict, heading: Optional[str] = "###") -> str:
  """Table 8 of `purification_table`'s dict as Markdown: the paper's two rows (input x or
  x_adv; input x_avg) under its caption (a `heading` line; None: no caption line, for a
  caller that writes its own), a line on how it was computed, and per attack the points
  x_avg recovers and loses. Accuracies in %."""
  attacks = table["attacks"]
  main = markdown.table(
      ["Input", "Clean Accuracy"] + [r["label"] for r in attacks],
      [["x or x_adv", _percent(table["clean"]["accuracy_x"])]
       + [_percent(r["accuracy_adv"]) for r in attacks],
       ["x_avg", _percent(table["clean"]["accuracy_x_avg"])]
       + [_percent(r["accuracy_purified"]) for r in attacks]])
  lines = [f"{heading} {table['caption']}", ""] if heading is not None else []
  lines += [main, "",
           f"{table['num_points']} test points ({table['selection']}). x_adv is generated "
           f"against the backbone alone (grey-box: the attacker does not know the SR "
           f"blocks); x_avg is the separately trained SR purifier's output on x (clean "
           f"column) or on x_adv, then classified by the same backbone (paper App. C.5). "
           f"Only points the backbone classifies correctly are attacked (x_adv = x on "
           f"its clean errors)."]
  if attacks:
    lines += ["", markdown.table(
        ["attack", "robust (attack's verdict)", "recovered by x_avg", "lost by x_avg",
         "mean max abs(x_avg − x_adv)"],
        [[r["label"], f"{_percent(r['robust_accuracy'])} %", r["recovered"], r["lost"],
          f"{r['mean_linf_change']:.4f}"] for r in attacks])]
  return "\n".join(lines) + "\n"
