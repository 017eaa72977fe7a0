"""`paper(config, workdir)`: the SiRIIB paper's tables and figures from trained runs — the entry
point of `main.py --mode=paper` (docs/paper.md).

The run in `workdir` (built from `config`, as `--mode=eval`) is compared with the runs of
`config.paper.runs` (workdirs; each one's model is rebuilt from the `config.json` training
wrote there, `run_config.load`). Each run has a role, read from its config: **baseline**
(`model.siriib.enabled = False`), **SiRIIB** (enabled, the plug-in of §4), or **purifier**
(`model.siriib.placement = "purifier"`: SR modules trained alone, App. C.5). For each of the
paper's Tables 1–9 and Figures 1, 2 and 4–11, and for the health of SiRIIB's IB path, the
report has a section under its number and caption (`analysis/paper_sections.py` builds
them): the table or the PNG where the given runs support it, else one line saying which run
is missing. All accuracies are measured here, on `config.paper.num_points` stratified test
points (seed `config.evaluation.seed`), with `config.evaluation`'s threat models — never
the paper's numbers.

Writes `workdir/paper/report.md`, `report.json` and the PNGs beside them. Only process 0
writes.
"""

import json
import os
from typing import Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from siriib_jax.analysis import corruptions
from siriib_jax.analysis.paper_sections import CAPTIONS, SECTIONS, Context, Missing, Run
from siriib_jax.config_errors import fail
from siriib_jax.data import DatasetNotFoundError, InputPipeline
from siriib_jax.evaluation.attack_specs import parse_spec
from siriib_jax.runs import open_run


def load_run(workdir: str, config: Optional[ml_collections.ConfigDict] = None) -> Run:
  """The run in `workdir` (`runs.open_run`), with `config` (default: the run's own
  `config.json`): its weight average when that config has `weight_averaging.decay > 0`,
  else its raw weights.

  Raises:
    FileNotFoundError: no `config.json` where `config` is not given.
    CheckpointError: no readable checkpoint (`evaluation.checkpoint` of the run's config).
  """
  run = open_run(workdir, config)
  return Run(run.name("paper"), workdir, run.kind, run.config, run.model, run.variables,
             run.step, run.weights)


def _distinct_labels(runs: list[Run]) -> None:
  """Appends what differs (strategy, λ1, p_i count, dataset) to labels that collide."""
  for run in runs:
    same = [r for r in runs if r.label == run.label]
    if len(same) < 2:
      continue
    keys = [("strategy", lambda c: c.strategy), ("λ1", lambda c: c.loss.lambda1),
            ("p_i", lambda c: c.model.siriib.num_skips), ("data", lambda c: c.dataset.name),
            ("seed", lambda c: c.seed)]
    differing = [(k, f) for k, f in keys if len({str(f(r.config)) for r in same}) > 1]
    for r in same:
      r.label += " (" + ", ".join(f"{k} {f(r.config)}" for k, f in differing) + ")" \
          if differing else f" ({os.path.basename(os.path.normpath(r.workdir))})"


def _validate_paper_config(config: ml_collections.ConfigDict) -> None:
  paper = config.paper
  for key in ("num_points", "num_images", "tsne_points", "corruption_points"):
    if not isinstance(paper[key], int) or paper[key] < 1:
      fail(f"paper.{key}", paper[key], "it must be an integer ≥ 1")
  for key in ("attacks", "l2_attacks", "purification_attacks", "figure_attacks"):
    for name in paper[key]:
      if name != "clean":
        parse_spec(name, config.evaluation)  # Raises ConfigError with "did you mean".
  for workdir in paper.runs:
    if not os.path.isdir(workdir):
      fail("paper.runs", workdir, "no such directory: give the workdirs of trained runs")


def paper(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Writes `workdir/paper/report.md`, `report.json` and the PNGs (see the module doc).

  Returns:
    The report as a dict: `sections` (number → {status, caption, markdown, pngs, data}),
    `runs` (label → workdir, role, weights: "averaged" or "raw").
  Raises:
    ConfigError: a bad `paper` or evaluation key (before anything is loaded).
    CheckpointError, FileNotFoundError: a run cannot be loaded.
  """
  _validate_paper_config(config)
  data = InputPipeline(config.dataset, global_batch_size=config.evaluation.batch_size,
                       seed=config.seed, training=False)
  runs = [load_run(workdir, config)] + [load_run(w) for w in config.paper.runs]
  _distinct_labels(runs)
  directory = os.path.join(os.path.abspath(workdir), "paper")
  os.makedirs(directory, exist_ok=True)
  ctx = Context(config, runs, data, directory)
  sections = {}
  for number, build in SECTIONS.items():
    logging.info("paper: %s", number)
    try:
      section = build(ctx)
      sections[number] = {"status": "done", "markdown": section.markdown,
                          "pngs": list(section.pngs), "data": section.data}
    except Missing as missing:
      sections[number] = {"status": "missing", "reason": str(missing)}
    except (corruptions.CorruptionDataError, DatasetNotFoundError, FileNotFoundError) as error:
      # Data a section needs and the machine lacks (Table 9's CIFAR-10-C): the report
      # says so, the other sections stand.
      sections[number] = {"status": "missing", "reason": str(error).rstrip(".")}
    sections[number]["caption"] = CAPTIONS[number]
  result = {"runs": {r.label: {"workdir": r.workdir, "role": r.role, "weights": r.weights}
                     for r in runs},
            "num_points": int(len(ctx.y)), "seed": int(ctx.evaluation.seed),
            "reports": ctx.reports(),
            "sections": sections}
  if jax.process_index() == 0:
    with open(os.path.join(directory, "report.json"), "w") as f:
      json.dump(result, f, indent=1, default=_jsonable)
    with open(os.path.join(directory, "report.md"), "w") as f:
      f.write(to_markdown(result))
  return result


def _jsonable(value):
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


def to_markdown(result: dict) -> str:
  """The report: the runs, then each section under the paper's number and caption."""
  lines = ["# The SiRIIB paper's tables and figures, measured on these runs", "",
           f"{result['num_points']} stratified test points, seed {result['seed']}. "
           "Accuracies in %, measured here (not the paper's numbers).", "",
           "| run | role | weights | workdir |", "|---|---|---|---|"]
  lines += [f"| {label} | {r['role']} | {r.get('weights', 'raw')} | `{r['workdir']}` |"
            for label, r in result["runs"].items()]
  for number, section in result["sections"].items():
    lines += ["", f"## {number}. {section['caption']}", ""]
    if section["status"] == "missing":
      lines.append(f"*Not produced: {section['reason']}.*")
      continue
    if section["markdown"]:
      lines += [section["markdown"], ""]
    for label, png in section["pngs"]:
      lines.append(f"![{label}]({png})")
  return "\n".join(lines) + "\n"
