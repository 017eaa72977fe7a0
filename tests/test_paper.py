"""siriib_jax/paper.py (`--mode=paper`): the report on two tiny trained runs.

The report test trains two runs and runs every section's attacks (3.5 minutes here): it is
`slow`, run with `pytest -m slow tests/test_paper.py`."""

import json
import os
import re

import pytest

from siriib_jax import paper
from siriib_jax.analysis import paper_sections as sections
from siriib_jax.config_errors import ConfigError
from siriib_jax.evaluation import ib_path
from siriib_jax.train import train_and_evaluate
from tests.helpers import tiny_model, tiny_training_config, write_npz_dataset


def _tiny_paper_config(data_dir, siriib: bool):
  config = tiny_training_config(data_dir)
  config.model.siriib.enabled = siriib
  config.max_steps = 1
  config.final_eval_size = 0
  e = config.evaluation
  e.batch_size, e.adaptive_steps, e.square_queries = 16, 1, 10
  e.svd_study.attacks, e.svd_study.grid_attacks, e.svd_study.grid_images = ("pgd1",), ("pgd1",), 2
  p = config.paper
  p.num_points, p.num_images, p.tsne_points = 10, 2, 10
  p.attacks, p.l2_attacks, p.figure_attacks = ("clean", "pgd1"), ("l2-pgd1",), ("pgd1", "cw1")
  p.purification_attacks = ("pgd1",)
  return config


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("paper")
  data = write_npz_dataset(root / "data", num_train=24, num_test=20)
  configs = {}
  for name, siriib in (("sr", True), ("r18", False)):
    configs[name] = _tiny_paper_config(data, siriib)
    train_and_evaluate(configs[name], str(root / name))
  return root, configs


@pytest.mark.slow
def test_the_report_names_every_section_and_links_pngs_that_exist(two_runs):
  root, configs = two_runs
  config = configs["sr"]
  config.paper.runs = (str(root / "r18"),)
  result = paper.paper(config, str(root / "sr"))
  directory = root / "sr" / "paper"
  report = (directory / "report.md").read_text()
  for number in ("Table 8", "Table 9", "Figure 7", "Figure 8", "Figure 9"):
    assert f"## {number}. " in report, number
  sections = result["sections"]
  for number in ("Table 3", "Table 4", "Table 7", "Figure 1", "Figure 2", "Figure 4",
                 "Figure 7", "Figure 8", "Figure 9", "Figure 10", "Figure 11"):
    assert sections[number]["status"] == "done", (number, sections[number])
  # No purifier run and no CIFAR-10-C: Tables 8 and 9 say what is missing; so do the
  # ablations, which need several SiRIIB runs.
  for number in ("Table 1", "Table 2", "Table 8", "Table 9"):
    assert sections[number]["status"] == "missing", number
  assert "purifier run" in sections["Table 8"]["reason"]
  links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
  assert len(links) >= 9
  for link in links:
    assert (directory / link).is_file(), link
  assert json.loads((directory / "report.json").read_text())["sections"].keys() == \
      sections.keys()
  assert {run["role"] for run in result["runs"].values()} == {"SiRIIB", "baseline"}


def test_a_missing_run_directory_is_refused_before_anything_loads(tmp_path):
  config = _tiny_paper_config(write_npz_dataset(tmp_path / "data"), True)
  config.paper.runs = (str(tmp_path / "no_such_run"),)
  with pytest.raises(ConfigError, match="paper.runs"):
    paper.paper(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "paper")


def test_reports_are_kept_and_reused_until_the_checkpoint_changes(tmp_path, monkeypatch):
  """A rerun reads each run's accuracies from `paper/reports/` instead of attacking again;
  another checkpoint step (a retrained run) is evaluated afresh."""
  config = _tiny_paper_config(write_npz_dataset(tmp_path / "data"), True)
  data = paper.InputPipeline(config.dataset, global_batch_size=16, seed=0, training=False)
  calls = []

  def fake_evaluate(model, variables, cfg, points, attacks):
    calls.append(attacks)
    row = lambda name, accuracy: type("Row", (), {"name": name, "accuracy": accuracy})
    return type("Report", (), {"rows": [row("clean", 0.5), row("pgd1", 0.25 * len(calls))]})

  monkeypatch.setattr(sections, "evaluate_robustness", fake_evaluate)
  run = lambda step: sections.Run("ResNet-18-SR", str(tmp_path / "sr"), sections.SIRIIB,
                                  config, None, {}, step)
  first = sections.Context(config, [run(5)], data, str(tmp_path / "paper")).report(run(5))
  again = sections.Context(config, [run(5)], data, str(tmp_path / "paper")).report(run(5))
  assert first == again == {"clean": 50.0, "pgd1": 25.0} and len(calls) == 1
  assert "adaptive" in calls[0]
  retrained = sections.Context(config, [run(9)], data, str(tmp_path / "paper")).report(run(9))
  assert retrained["pgd1"] == 50.0 and len(calls) == 2
  assert len(os.listdir(tmp_path / "paper" / "reports")) == 2


def test_svd_studies_are_kept_per_checkpoint_not_per_position(tmp_path, monkeypatch):
  """Figures 1–2 reuse a run's SVD study only for the same checkpoint (and points and
  evaluation config): a retrained run, or a run listed at another position, never shows
  another study's numbers."""
  config = _tiny_paper_config(write_npz_dataset(tmp_path / "data"), True)
  data = paper.InputPipeline(config.dataset, global_batch_size=16, seed=0, training=False)
  calls = []

  def fake_svd_study(model, variables, cfg, points, directory):
    calls.append(directory)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "svd_study.json"), "w") as f:
      json.dump({"call": len(calls)}, f)

  monkeypatch.setattr(sections, "svd_study", fake_svd_study)
  run = lambda step, name="sr": sections.Run(name, str(tmp_path / name), sections.SIRIIB,
                                             config, None, {}, step)
  figure = lambda *runs: sections.figures_1_2(
      sections.Context(config, list(runs), data, str(tmp_path / "paper")), 1).pngs
  first = figure(run(5))
  assert figure(run(5)) == first and len(calls) == 1
  retrained = figure(run(9))
  assert len(calls) == 2 and retrained[0][1] != first[0][1]
  # Another run placed first does not take over the first run's study.
  both = figure(run(3, "other"), run(5))
  assert len(calls) == 3 and both[1] == first[0]


def test_the_ib_path_section_shows_each_siriib_runs_skip_ablation(tmp_path, monkeypatch):
  """One row per SiRIIB run with `ib_path.skip_ablation`'s numbers, kept in `reports/`
  (a rerun reads them); without a SiRIIB run the section is missing."""
  config = _tiny_paper_config(write_npz_dataset(tmp_path / "data"), True)
  data = paper.InputPipeline(config.dataset, global_batch_size=16, seed=0, training=False)
  monkeypatch.setattr(sections, "IB_PATH_ATTACKS", ("clean", "pgd1"))  # A quick compile.
  model, variables = tiny_model(size=32)
  run = sections.Run("ResNet-18-SR", str(tmp_path / "sr"), sections.SIRIIB, config, model,
                     variables, 5)
  ctx = sections.Context(config, [run], data, str(tmp_path / "paper"))
  section = sections.ib_path_health(ctx)
  expected = ib_path.skip_ablation(model, variables, ctx.evaluation, ctx.x, ctx.y,
                                   attacks=("clean", "pgd1"))
  assert section.data == {"ResNet-18-SR": expected}
  health = expected["health"]
  row = [line for line in section.markdown.splitlines() if line.startswith("| ResNet-18-SR")]
  assert row == ["| ResNet-18-SR | " + " | ".join(
      [f"{100 * health['ib_dead_fraction']:.1f}", f"{health['f_spread']:.3g}",
       "yes" if health["ib_collapsed"] else "no"]
      + [f"{100 * expected[w][n]:.2f}" for w in ("own", "ablated") for n in ("clean", "pgd1")])
      + " |"]

  def no_second_measure(*args, **kwargs):
    raise AssertionError("measured again instead of read from paper/reports/")

  monkeypatch.setattr(ib_path, "skip_ablation", no_second_measure)
  again = sections.ib_path_health(sections.Context(config, [run], data, str(tmp_path / "paper")))
  assert again.data == section.data
  baseline = sections.Run("ResNet-18", str(tmp_path / "r18"), sections.BASELINE, config, model,
                          variables, 5)
  with pytest.raises(sections.Missing, match="SiRIIB run"):
    sections.ib_path_health(sections.Context(config, [baseline], data, str(tmp_path / "p2")))
