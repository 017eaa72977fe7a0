"""The evaluation report: rows of accuracies, AutoAttack's cascade, the masking checklist;
written as JSON and Markdown (docs/evaluation.md, "Report format")."""

import dataclasses
import json
import os
from typing import Optional

from siriib_jax import markdown
from siriib_jax.evaluation.checklist import CheckItem

JSON_NAME = "robustness.json"
MARKDOWN_NAME = "robustness.md"


@dataclasses.dataclass
class Row:
  """One accuracy.

  Attributes:
    group: 'clean', 'linf', 'l2', 'adaptive' (Table 4) or 'checklist' (large-ε PGD).
    name: the config name (`pgd20`, `l2-cw100`, `adaptive:ce+svd`, …).
    attack: the registry name, or the adaptive loss (`ce+svd`).
    label: the paper's name (PGD-20, L_CE + L_svd, …).
    family: `pgd`, `cw`, `autoattack`, `square`, … (`clean`, `adaptive`).
    norm, eps, step_size, steps: the threat model (None for clean).
    accuracy: robust / total, in [0, 1].
    robust, total: points classified correctly on x and on the attack's x_adv; points.
    seconds: wall time, compilation included.
  """
  group: str
  name: str
  attack: str
  label: str
  family: str
  norm: Optional[str]
  eps: Optional[float]
  step_size: Optional[float]
  steps: Optional[int]
  accuracy: float
  robust: int
  total: int
  seconds: float


@dataclasses.dataclass
class Report:
  """meta: the run (points, seed, checkpoint, config.evaluation); rows: `Row`s in run
  order; autoattack: name -> component -> {attacked, broken, accuracy_after};
  checklist: `CheckItem`s; passed: no checklist item failed."""
  meta: dict
  rows: list[Row]
  autoattack: dict
  checklist: list[CheckItem]

  @property
  def passed(self) -> bool:
    return all(item.passed is not False for item in self.checklist)

  def accuracy(self, name: str) -> float:
    """The accuracy of the row called `name` (`clean`, `pgd20`, `adaptive:ce`, …)."""
    return next(r.accuracy for r in self.rows if r.name == name)

  def to_json(self) -> dict:
    return {"meta": self.meta, "rows": [dataclasses.asdict(r) for r in self.rows],
            "autoattack": self.autoattack,
            "checklist": [dataclasses.asdict(c) for c in self.checklist],
            "passed": self.passed}


def _eps(row: Row) -> str:
  if row.eps is None:
    return "—"
  return f"{row.eps * 255:g}/255" if row.norm == "linf" else f"{row.eps:g}"


def _status(passed: Optional[bool]) -> str:
  return {True: "pass", False: "**FAIL**", None: "skipped"}[passed]


def to_markdown(report: Report) -> str:
  """The report as Markdown tables (accuracies in %, two decimals)."""
  meta = report.meta
  lines = [f"# Robustness: {meta.get('model', 'model')}", "",
           f"{meta['num_points']} test points ({meta['selection']}), seed {meta['seed']}"
           + (f", checkpoint {meta['checkpoint']} (step {meta['step']})"
              if meta.get("checkpoint") else "") + "."]
  if meta.get("nonfinite_gradient_points"):
    lines += ["", f"{meta['nonfinite_gradient_points']} of {meta['num_points']} points have a "
              "NaN or inf entry in the model's input gradient at the clean image; the gradient "
              "attacks step with those entries set to 0 (docs/evaluation.md)."]
  lines += ["", markdown.table(
      ["attack", "norm", "ε", "steps", "accuracy (%)", "robust / total", "seconds"],
      [[row.label, row.norm or "—", _eps(row), row.steps or "—", f"{100 * row.accuracy:.2f}",
        f"{row.robust} / {row.total}", f"{row.seconds:.1f}"]
       for row in report.rows if row.group in ("clean", "linf", "l2")])]
  adaptive = [r for r in report.rows if r.group == "adaptive"]
  if adaptive:
    lines += ["", "## Adaptive attacks (PGD-20, paper Table 4)", "", markdown.table(
        ["loss", "accuracy (%)", "robust / total"],
        [[r.label, f"{100 * r.accuracy:.2f}", f"{r.robust} / {r.total}"] for r in adaptive])]
  ib = meta.get("ib_path")
  if ib and ib.get("measured"):
    health = ib["health"]
    label = {r.name: r.label for r in report.rows}
    lines += ["", "## SiRIIB's IB path", "",
              f"Dead units of c(·)'s last ReLU: {100 * health['ib_dead_fraction']:.1f} %; "
              f"f_spread {health['f_spread']:.3g}"
              + (" — **collapsed**: the skip features are constants, the model is its "
                 "backbone plus fixed biases." if health["ib_collapsed"] else
                 " — **unused**: replacing the skip features by their means changes no "
                 "accuracy." if ib.get("unused") else "."),
              "", markdown.table(
                  ["accuracy (%)", *(label.get(n, n) for n in ib["own"])],
                  [["model", *(f"{100 * v:.2f}" for v in ib["own"].values())],
                   ["f_i replaced by their mean", *(f"{100 * v:.2f}"
                                                    for v in ib["ablated"].values())]])]
  elif ib:
    lines += ["", f"SiRIIB's IB path: not measured ({ib['reason']})."]
  for name, cascade in report.autoattack.items():
    lines += ["", f"## AutoAttack cascade ({name})", "", markdown.table(
        ["component", "attacked", "broken", "accuracy after (%)", "seconds"],
        [[c, v["attacked"], v["broken"], f"{100 * v['accuracy_after']:.2f}",
          f"{v['seconds']:.1f}"] for c, v in cascade.items()])]
  lines += ["", "## Gradient-masking checklist: " + ("pass" if report.passed else "**FAIL**"),
            "", markdown.table(["check", "result", "details"],
                               [[c.name, _status(c.passed), c.details]
                                for c in report.checklist])]
  return "\n".join(lines) + "\n"


def write_report(report: Report, directory: str) -> tuple[str, str]:
  """Writes `robustness.json` and `robustness.md` in `directory`; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  json_path = os.path.join(directory, JSON_NAME)
  markdown_path = os.path.join(directory, MARKDOWN_NAME)
  with open(json_path, "w") as f:
    json.dump(report.to_json(), f, indent=2)
  with open(markdown_path, "w") as f:
    f.write(to_markdown(report))
  return json_path, markdown_path
