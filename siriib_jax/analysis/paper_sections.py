"""The sections of the SiRIIB paper's report: each table and figure built from trained runs
as one `Section` (markdown, PNGs, data), or `Missing` where the runs do not support it.

    ctx = paper_sections.Context(config, runs, data, directory)
    for number, build in paper_sections.SECTIONS.items():
      section = build(ctx)  # A Section; raises Missing.
"""

import dataclasses
import hashlib
import json
import os
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from siriib_jax import complexity
from siriib_jax import markdown
from siriib_jax import plotting
from siriib_jax.analysis import corruptions, features, scorecam, tsne, xavg
from siriib_jax.data import InputPipeline
from siriib_jax.evaluation import adaptive, evaluate_robustness, ib_path, purification, svd_study
from siriib_jax.evaluation.attack_specs import build_attack, parse_spec
from siriib_jax.evaluation.batching import attack_key, run_attack
from siriib_jax.evaluation.robustness import load_points
from siriib_jax.models.model_fn import logits_fn
from siriib_jax.runs import BASELINE, PURIFIER, SIRIIB, display_name

# The skip ablation's attacks (the IB path section).
IB_PATH_ATTACKS = ("clean", "pgd20")


class Missing(Exception):
  """A section the given runs do not support; the message says which run would."""


@dataclasses.dataclass(frozen=True)
class Section:
  """A built section of the report.

  Attributes:
    markdown: the table or note ("" for none).
    pngs: (label, path relative to the report's directory) of each figure.
    data: the numbers behind the table (JSON-able), or None.
  """
  markdown: str = ""
  pngs: tuple = ()
  data: object = None


@dataclasses.dataclass
class Run:
  """A trained run: its label in the report, role, config, model and variables."""
  label: str
  workdir: str
  role: str
  config: ml_collections.ConfigDict
  model: object
  variables: dict
  step: int = -1  # The checkpoint's step (the report cache's key).
  weights: str = "raw"  # "averaged" (its weight average, weight_averaging.decay > 0) or "raw".

  @property
  def dataset(self) -> str:
    return self.config.dataset.name


class Context:
  """The runs, the points and the per-run evaluation reports (computed once, and kept in
  `<directory>/reports/` so that a rerun after a crash or an added run does not attack
  again)."""

  def __init__(self, config, runs: list[Run], data: InputPipeline, directory: str):
    self.config, self.runs, self.directory = config, runs, directory
    paper = config.paper
    self.evaluation = config.evaluation.copy_and_resolve_references()
    self.evaluation.checklist.large_eps = 0.0  # The tables' attacks only.
    self.evaluation.skip_ablation = ()  # Measured once, by the IB path section.
    self.x, self.y = load_points(data, self.evaluation, paper.num_points)
    take = min(paper.num_images, len(self.y))
    # Spread over the points (a stratified subset may come sorted by class).
    self.picture_index = np.unique(np.linspace(0, len(self.y) - 1, take).round().astype(int))
    self._reports = {}

  def by_role(self, *roles: str) -> list[Run]:
    """The runs whose role is one of `roles`, in the order given in the config."""
    return [r for r in self.runs if r.role in roles]

  def reports(self) -> dict[str, Optional[dict[str, float]]]:
    """Run label → its report (`report`), None for the runs no section evaluated."""
    return {r.label: self._reports.get(r.workdir) for r in self.runs}

  def key(self, run: Run, *what) -> str:
    """16 hex digits naming a result kept under `directory` for `run`: a hash of what it
    depends on (the run's workdir, checkpoint step and weights, `what` (e.g. the attacks), the
    evaluation config, the points), so a rerun reuses it and nothing else does."""
    return hashlib.sha256(json.dumps(
        [os.path.abspath(run.workdir),
         run.step if run.weights == "raw" else f"{run.step} averaged", list(what),
         self.evaluation.to_json(),
         len(self.y), hashlib.sha256(self.x.tobytes() + self.y.tobytes()).hexdigest()]
    ).encode()).hexdigest()[:16]

  def _kept(self, run: Run, attacks: tuple, field: str, compute: Callable[[], dict],
            kind: tuple = ()) -> dict:
    """`compute()`, kept in `reports/<key(run, *kind, *attacks)>.json` under `field`: read
    back when there, written (process 0) when not."""
    path = os.path.join(self.directory, "reports", f"{self.key(run, *kind, *attacks)}.json")
    if os.path.exists(path):
      with open(path) as f:
        value = json.load(f)[field]
      logging.info("paper: %s's %s read from %s", run.label, field, path)
      return value
    value = compute()
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path + ".tmp", "w") as f:
        json.dump({"run": run.label, "workdir": run.workdir, "step": run.step,
                   "weights": run.weights, "attacks": attacks, field: value}, f, indent=1)
      os.replace(path + ".tmp", path)
    return value

  def report(self, run: Run) -> dict[str, float]:
    """Row name → accuracy (%) of `paper.attacks` + `paper.l2_attacks` (+ Table 4's
    adaptive attacks for SiRIIB runs) on the paper's points.

    Kept in `reports/<key>.json` (`key`, of the attacks).
    """
    if run.workdir not in self._reports:
      paper = self.config.paper
      attacks = tuple(paper.attacks) + tuple(paper.l2_attacks)
      if run.role == SIRIIB:
        attacks += ("adaptive",)

      def evaluate():
        config = ml_collections.ConfigDict({"evaluation": self.evaluation})
        logging.info("paper: evaluating %s (%s)", run.label, ", ".join(attacks))
        report = evaluate_robustness(run.model, run.variables, config, (self.x, self.y),
                                     attacks=attacks)
        return {row.name: 100.0 * row.accuracy for row in report.rows}

      self._reports[run.workdir] = self._kept(run, attacks, "accuracy", evaluate)
    return self._reports[run.workdir]

  def ib_path(self, run: Run) -> dict:
    """`ib_path.skip_ablation` of a SiRIIB run under `IB_PATH_ATTACKS` on the paper's points
    (accuracies as fractions; the model's own ones taken from its report when already
    measured). Kept in `reports/<key>.json` (`key`, of "ib_path" and the attacks)."""

    def measure():
      known = self._reports.get(run.workdir) or {}
      own = {n: known[n] / 100.0 for n in IB_PATH_ATTACKS if n in known}
      logging.info("paper: skip ablation of %s", run.label)
      return ib_path.skip_ablation(run.model, run.variables, self.evaluation, self.x, self.y,
                                   attacks=IB_PATH_ATTACKS, own=own)

    return self._kept(run, IB_PATH_ATTACKS, "ib_path", measure, kind=("ib_path",))

  def png(self, figure, name: str) -> str:
    plotting.save_png(figure, os.path.join(self.directory, name))
    return name

  def pictures(self) -> tuple[np.ndarray, np.ndarray]:
    return self.x[self.picture_index], self.y[self.picture_index]

  def adversarial(self, run: Run, name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x_adv of the config attack `name` against `run`, every point attacked (clean errors
    included: a picture shows the attack on every image, as the paper's figures do)."""
    spec = parse_spec(name, self.evaluation)
    outcome = run_attack(build_attack(spec, self.evaluation), logits_fn(run.model, run.variables),
                         x, y, attack_key(self.evaluation.seed, name),
                         self.evaluation.batch_size, np.ones(len(y), bool), only_robust=False)
    return outcome.x_adv


def _label_of(name: str, evaluation) -> str:
  if name == "clean":
    return "Clean"
  spec = parse_spec(name, evaluation)
  return ("L2 " if spec.norm == "l2" else "") + spec.label


def _accuracy_table(ctx: Context, runs: list[Run], names, first: Optional[tuple] = None) -> str:
  """Markdown: one row per run, one column per attack name (accuracy %)."""
  head = ([first[0]] if first else []) + ["model"] + [_label_of(n, ctx.evaluation) for n in names]
  rows = []
  for run in runs:
    report = ctx.report(run)
    cells = ([str(first[1](run.config))] if first else []) + [run.label]
    rows.append(cells + [f"{report[n]:.2f}" if n in report else "—" for n in names])
  return markdown.table(head, rows)


def _ablation(key: str, value: Callable, what: str):
  def section(ctx: Context) -> Section:
    runs = ctx.by_role(SIRIIB)
    if len({str(value(r.config)) for r in runs}) < 2:
      raise Missing(f"needs SiRIIB runs that differ in {key} ({what}); "
                    f"given: {len(runs)} SiRIIB run(s)")
    runs = sorted(runs, key=lambda r: value(r.config))
    return Section(_accuracy_table(ctx, runs, ctx.config.paper.attacks, first=(key, value)))
  return section


def table3(ctx: Context) -> Section:
  rows, seen = [], set()
  for run in ctx.runs:
    if run.label in seen:
      continue
    seen.add(run.label)
    count = complexity.count_complexity(run.model, run.config.dataset.image_size)
    rows.append([run.label, f"{count.params / 1e6:.2f}", f"{count.macs / 1e9:.3f}"])
  return Section(markdown.table(["model", "parameters (M)", "MACs (G)"], rows))


def table4(ctx: Context) -> Section:
  runs = ctx.by_role(SIRIIB)
  if not runs:
    raise Missing("needs a SiRIIB run (model.siriib.enabled = True)")
  names = [f"adaptive:{loss}" for loss in adaptive.TABLE4_LOSSES]
  head = ["model"] + [adaptive.loss_label(loss) for loss in adaptive.TABLE4_LOSSES]
  rows = [[run.label] + [f"{ctx.report(run)[n]:.2f}" for n in names] for run in runs]
  return Section(markdown.table(head, rows))


def _subset_table(predicate: Callable[[Run], bool], what: str):
  def section(ctx: Context) -> Section:
    runs = [r for r in ctx.by_role(BASELINE, SIRIIB) if predicate(r)]
    if not runs:
      raise Missing(f"needs {what}")
    return Section(_accuracy_table(ctx, runs, ctx.config.paper.attacks))
  return section


def table7(ctx: Context) -> Section:
  runs = ctx.by_role(BASELINE, SIRIIB)
  if not ctx.config.paper.l2_attacks:
    raise Missing("paper.l2_attacks is empty")
  return Section(_accuracy_table(ctx, runs, ["clean", *ctx.config.paper.l2_attacks]))


def _purifier(ctx: Context) -> Run:
  runs = ctx.by_role(PURIFIER)
  if not runs:
    raise Missing("needs a purifier run (model.siriib.placement = 'purifier', "
                  "docs/purification.md), e.g. configs/quickstart_purifier.py")
  return runs[0]


def table8(ctx: Context) -> Section:
  run = _purifier(ctx)
  table = purification.purification_table(
      run.model, run.variables, ctx.evaluation, (ctx.x, ctx.y),
      attacks=tuple(ctx.config.paper.purification_attacks))
  return Section(purification.to_markdown(table, heading=None), data=table)


def table9(ctx: Context) -> Section:
  run = _purifier(ctx)
  paper = ctx.config.paper
  backbone, purified = purification.predict_functions(run.model, run.variables)
  label = display_name(run.config.model).replace(" + SR purifier", "")
  fns = {label: backbone, f"{label} + SR modules": purified}
  if paper.corruptions_dir:
    source = corruptions.ReleaseSource(paper.corruptions_dir,
                                       corruptions=tuple(paper.corruptions) or None)
  else:
    dataset = ctx.config.dataset.copy_and_resolve_references()
    dataset.name = "cifar10_corrupted"
    source = corruptions.TfdsSource(dataset, corruptions=tuple(paper.corruptions) or None)
  result = corruptions.corruption_accuracy(
      fns, source, ctx.evaluation.batch_size, max_per_severity=paper.corruption_points,
      seed=ctx.evaluation.seed)
  return Section(corruptions.table9_markdown(result), data=result)


def figures_1_2(ctx: Context, which: int) -> Section:
  runs = ctx.by_role(BASELINE, SIRIIB)
  pngs = []
  for run in runs:
    # Keyed like the reports: another checkpoint, evaluation config or set of points is
    # studied again, never shown under an earlier study's numbers.
    name = f"svd_study_{ctx.key(run, 'svd_study')}"
    directory = os.path.join(ctx.directory, name)
    if not os.path.exists(os.path.join(directory, "svd_study.json")):
      config = ml_collections.ConfigDict({"evaluation": ctx.evaluation})
      svd_study(run.model, run.variables, config, (ctx.x, ctx.y), directory=directory)
    png = "svd_study_accuracy.png" if which == 1 else "svd_study_images.png"
    pngs.append((run.label, os.path.join(name, png)))
  return Section(pngs=tuple(pngs))


def figure4(ctx: Context) -> Section:
  runs = sorted(ctx.by_role(SIRIIB), key=lambda r: r.config.loss.lambda1)
  if not runs:
    raise Missing("needs SiRIIB runs (one per λ1)")
  x, _ = ctx.pictures()
  rows = {f"λ1 = {r.config.loss.lambda1:g}" + (f" ({r.label})" if len(runs) > 1 else ""):
          xavg.x_avg(r.model, r.variables, x) for r in runs}
  note = "" if len(runs) > 1 else ("One SiRIIB run: add runs of other λ1 to paper.runs to "
                                   "compare, as the paper's five rows do.")
  return Section(note, (("x_avg per λ1", ctx.png(plotting.image_grid(xavg.x_avg_rows(x, rows)),
                                                 "figure4_x_avg_lambda1.png")),))


def _scatter(dataset: str):
  def section(ctx: Context) -> Section:
    runs = [r for r in ctx.by_role(BASELINE, SIRIIB) if r.dataset == dataset]
    if not {BASELINE, SIRIIB} <= {r.role for r in runs}:
      raise Missing(f"needs a baseline and a SiRIIB run on {dataset}")
    attacks = [a for a in ctx.config.paper.attacks if a != "clean"]
    points = {r.label: (r.role == SIRIIB, ctx.report(r)["clean"],
                        {_label_of(a, ctx.evaluation): ctx.report(r)[a] for a in attacks})
              for r in runs}
    figure = plotting.accuracy_scatter(points)
    return Section(pngs=(("clean vs robust accuracy",
                          ctx.png(figure, f"figure_{dataset}_scatter.png")),))
  return section


def _pair(ctx: Context) -> tuple[Run, Run]:
  baselines, siriibs = ctx.by_role(BASELINE), ctx.by_role(SIRIIB)
  for s in siriibs:
    for b in baselines:
      if b.config.model.name == s.config.model.name and b.dataset == s.dataset:
        return b, s
  raise Missing("needs a baseline run and a SiRIIB run of the same backbone and dataset")


def figure7(ctx: Context) -> Section:
  baseline, siriib = _pair(ctx)
  x, y = ctx.pictures()
  heat = {r.label: scorecam.score_cam(r.model, r.variables, x, labels=y)
          for r in (baseline, siriib)}
  figure = plotting.image_grid(scorecam.heatmap_rows(x, heat))
  return Section("Class: the true label.",
                 (("Score-CAM", ctx.png(figure, "figure7_score_cam.png")),))


def figure8(ctx: Context) -> Section:
  baseline, siriib = _pair(ctx)
  n = min(ctx.config.paper.tsne_points, len(ctx.y))
  x, y = ctx.x[:n], ctx.y[:n]
  embedded = tsne.embed_models({r.label: features.penultimate_features(r.model, r.variables, x)
                                for r in (baseline, siriib)}, seed=ctx.evaluation.seed)
  limits = tsne.shared_limits(list(embedded.values()))
  figure = plotting.embedding_figure(embedded, y, limits)
  return Section(f"{n} test points, common axes.",
                 (("t-SNE", ctx.png(figure, "figure8_tsne.png")),))


def _siriib(ctx: Context) -> Run:
  runs = ctx.by_role(SIRIIB)
  if not runs:
    raise Missing("needs a SiRIIB run (model.siriib.enabled = True)")
  return runs[0]


def figure9(ctx: Context) -> Section:
  run = _siriib(ctx)
  x, y = ctx.pictures()
  name = ctx.config.paper.figure_attacks[0]
  x_adv = ctx.adversarial(run, name, x, y)
  rows = xavg.adversarial_rows(x, x_adv, xavg.x_avg(run.model, run.variables, x_adv),
                               _label_of(name, ctx.evaluation))
  return Section(f"{run.label}.", (("x, x_adv, x_avg", ctx.png(plotting.image_grid(rows),
                                                              "figure9_x_avg.png")),))


def figure10(ctx: Context) -> Section:
  run = _siriib(ctx)
  x, y = ctx.pictures()
  by_attack = {}
  for name in ctx.config.paper.figure_attacks:
    x_adv = ctx.adversarial(run, name, x, y)
    by_attack[_label_of(name, ctx.evaluation)] = (x_adv, xavg.x_avg(run.model, run.variables,
                                                                     x_adv))
  rows = xavg.attack_comparison_rows(x, by_attack)
  return Section(f"{run.label}.", (("x_avg per attack", ctx.png(plotting.image_grid(rows),
                                                               "figure10_attacks.png")),))


def figure11(ctx: Context) -> Section:
  run = _siriib(ctx)
  x, y = ctx.pictures()
  threat = ctx.evaluation.linf
  examples = xavg.adaptive_examples(run.model, run.variables, x, y,
                                    attack_key(ctx.evaluation.seed, "figure11"), threat.eps,
                                    threat.step_size, ctx.evaluation.adaptive_steps)
  rows = xavg.x_avg_rows(x, {f"x_avg ({label})": xavg.x_avg(run.model, run.variables, x_adv)
                             for label, x_adv in examples.items()})
  return Section(f"{run.label}.", (("x_avg under adaptive attacks",
                                    ctx.png(plotting.image_grid(rows), "figure11_adaptive.png")),))


def ib_path_health(ctx: Context) -> Section:
  """One row per SiRIIB run: c(·)'s dead units, f_spread, collapse, and the accuracy (%) of
  the model and of its skip ablation (each f_i replaced by its mean over the points,
  `evaluation/ib_path.py`) under `IB_PATH_ATTACKS`. Data: run label → `skip_ablation`'s
  dict (accuracies as fractions)."""
  runs = ctx.by_role(SIRIIB)
  if not runs:
    raise Missing("needs a SiRIIB run (model.siriib.enabled = True)")
  labels = [_label_of(n, ctx.evaluation) for n in IB_PATH_ATTACKS]
  head = (["model", "dead units of c(·) (%)", "f_spread", "collapsed"] + labels
          + [f"ablated {label}" for label in labels])
  data, rows = {}, []
  for run in runs:
    result = data[run.label] = ctx.ib_path(run)
    health = result["health"]
    rows.append([run.label, f"{100 * health['ib_dead_fraction']:.1f}",
                 f"{health['f_spread']:.3g}", "yes" if health["ib_collapsed"] else "no"]
                + [f"{100 * result[which][n]:.2f}" for which in ("own", "ablated")
                   for n in IB_PATH_ATTACKS])
  note = ("Ablated: each skip feature f_i replaced by its mean over the points; equal "
          "accuracies mean the model does not use the path.")
  return Section(markdown.table(head, rows) + "\n\n" + note, data=data)


# The paper's numbers and captions (shortened where they describe rows at length), and the
# sections beyond the paper.
CAPTIONS = {
    "Table 1": "Ablation study on the number of p_i(·).",
    "Table 2": "Ablation study on λ1.",
    "Table 3": "Comparisons of the number of parameters (M) and the amount of multiply-add "
               "operations (G).",
    "Table 4": "Robust accuracy under adaptive attacks (PGD-20 on L_CE, L_svd, L_info and "
               "their sums).",
    "Table 5": "Comparisons between different WRN-28-10 structures.",
    "Table 6": "Evaluation on a real-world dataset, Tiny-ImageNet.",
    "Table 7": "Robust accuracy under l2-normed attacks.",
    "Table 8": "The clean accuracy and robust accuracy under the input of x, x_adv and "
               "x_avg, respectively.",
    "Table 9": "Accuracy under various common corruptions.",
    "Figure 1": "Combination between singular vectors of adversarial examples with singular "
                "values from clean images and adversarial examples under different attacks.",
    "Figure 2": "Visualization results of singular value combinations.",
    "Figure 4": "Visualization of x_avg under different λ1.",
    "Figure 5": "Clean accuracy and robust accuracy of ResNet-18 and ResNet-18-SR with "
                "different training strategies on CIFAR-10.",
    "Figure 6": "Clean accuracy and robust accuracy of ResNet-18 and ResNet-18-SR with "
                "different training strategies on CIFAR-100.",
    "Figure 7": "Heatmap generated by ScoreCam for ResNet-18 and ResNet-18-SR.",
    "Figure 8": "T-SNE of the penultimate features of ResNet-18 and ResNet-18-SR.",
    "Figure 9": "Visualization results of x, x_adv and x_avg.",
    "Figure 10": "x, x_adv and x_avg under PGD-20 and C&W-100.",
    "Figure 11": "x_avg under the adaptive attacks.",
    "IB path health": "Beyond the paper: the health of SiRIIB's information-bottleneck path "
                      "(dead units of c(·), f_spread, skip ablation).",
}

# Section number → its builder (`Context` → `Section`, or raises `Missing`), in report order.
SECTIONS: dict[str, Callable[[Context], Section]] = {
    "Table 1": _ablation("model.siriib.num_skips", lambda c: c.model.siriib.num_skips,
                         "the paper: 1, 2, 3"),
    "Table 2": _ablation("loss.lambda1", lambda c: c.loss.lambda1,
                         "the paper: 1, 1.5, 3, 5, 20"),
    "Table 3": table3,
    "Table 4": table4,
    "Table 5": _subset_table(lambda r: r.config.model.name.startswith("wrn"),
                             "WRN-28-10 runs (configs/cifar10_wrn28.py), with and without "
                             "SiRIIB, variants base / L / XL"),
    "Table 6": _subset_table(lambda r: r.dataset == "tiny_imagenet",
                             "Tiny-ImageNet runs (configs/tiny_imagenet_r18.py)"),
    "Table 7": table7,
    "Table 8": table8,
    "Table 9": table9,
    "Figure 1": lambda ctx: figures_1_2(ctx, 1),
    "Figure 2": lambda ctx: figures_1_2(ctx, 2),
    "Figure 4": figure4,
    "Figure 5": _scatter("cifar10"),
    "Figure 6": _scatter("cifar100"),
    "Figure 7": figure7,
    "Figure 8": figure8,
    "Figure 9": figure9,
    "Figure 10": figure10,
    "Figure 11": figure11,
    "IB path health": ib_path_health,
}
