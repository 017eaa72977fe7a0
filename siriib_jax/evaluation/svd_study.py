"""The SVD swap study (paper §3.1, Fig. 1–2): where attacks hide adversarial information.

Per attack, each adversarial image's channels are decomposed `x_adv = U_adv Σ_adv V_advᵀ`
and rebuilt with the clean singular values, `x_swap = U_adv Σ_clean V_advᵀ`
(`svd.swap_singular_values`). If accuracy on `x_swap` is much higher than on `x_adv`, the
attack hid its information mostly in the singular values. Accuracies here are plain
(`argmax = y` on the image, clean misclassifications included); `x_swap` is not clipped
to [0, 1] for the accuracy (it is for the pictures).

Writes `svd_study.json`, `svd_study.md`, `svd_study_accuracy.png` (Fig. 1: solid bars
x_adv, hatched bars x_swap) and `svd_study_images.png` (Fig. 2: rows x, then per attack
of `grid_attacks` the attack, its swap `-S` and `D = (-S) − attack`).

With several hosts each attacks and swaps its share of the points, every point keyed by its
global index; the per-point verdicts (and, for Fig. 2, the first `grid_images` points) are
gathered (`hosts.gather_points`), so every host computes the one-host summary, and only
process 0 writes the files.
"""

import json
import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from siriib_jax import markdown, parallel, plotting
from siriib_jax.evaluation.robustness import Points, load_share
from siriib_jax.evaluation.batching import attack_key, map_batches, predict, run_attack
from siriib_jax.evaluation.hosts import Hosts, current_hosts, gather_points
from siriib_jax.evaluation.attack_specs import (build_attack, parse_spec,
                                                validate_threat_models)
from siriib_jax.evaluation.progress import ProgressLog
from siriib_jax.models.model_fn import logits_fn
from siriib_jax.svd import swap_singular_values


_swap = jax.jit(swap_singular_values)


def swap_images(x_adv: np.ndarray, x_ref: np.ndarray, batch_size: int) -> np.ndarray:
  """`U_adv Σ_ref V_advᵀ` per image and channel, (N, H, W, C) float32, in batches."""
  return map_batches(_swap, (x_adv, x_ref), batch_size).astype(np.float32, copy=False)


def swap_correct(fn, x_adv: np.ndarray, x_ref: np.ndarray, y: np.ndarray,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(correct on x_adv (N,) bool, correct on x_swap (N,) bool, x_swap (N, H, W, C)) with
  the singular values of x_ref (`swap_images`)."""
  x_swap = swap_images(x_adv, x_ref, batch_size)
  return (predict(fn, x_adv, batch_size) == y, predict(fn, x_swap, batch_size) == y, x_swap)


def swap_accuracies(fn, x_adv: np.ndarray, x_ref: np.ndarray, y: np.ndarray,
                    batch_size: int) -> tuple[float, float, np.ndarray]:
  """(accuracy on x_adv, accuracy on x_swap, x_swap) with the singular values of x_ref
  (the clean images in the study; x_adv itself gives back x_adv, a sanity check)."""
  correct_adv, correct_swap, x_swap = swap_correct(fn, x_adv, x_ref, y, batch_size)
  return float(np.mean(correct_adv)), float(np.mean(correct_swap)), x_swap


def plot_accuracy(results: list[dict], clean: float, path: str) -> None:
  """Fig. 1: per attack, accuracy on x_adv (solid) and on x_swap (hatched), in %."""
  figure = plotting.paired_bars(
      [r["label"] for r in results], [100 * r["accuracy_adv"] for r in results],
      [100 * r["accuracy_swap"] for r in results],
      ("x_adv", "x_swap = U_adv Σ_clean V_advᵀ"), reference=100 * clean)
  plotting.save_png(figure, path, dpi=120)


def _difference(d: np.ndarray) -> np.ndarray:
  """A signed difference image shown around grey, scaled per image to its largest |d|."""
  return 0.5 + 0.5 * d / (np.abs(d).max(axis=(1, 2, 3), keepdims=True) + 1e-12)


def plot_grid(x: np.ndarray, pictures: dict[str, tuple[np.ndarray, np.ndarray]],
              path: str) -> None:
  """Fig. 2: rows x, then for each attack label: x_adv, x_swap ("-S"), D = x_swap − x_adv
  (scaled per image); one column per image."""
  rows = [("x", x)]
  for k, (label, (x_adv, x_swap)) in enumerate(pictures.items()):
    rows += [(label, np.clip(x_adv, 0, 1)), (f"{label}-S", np.clip(x_swap, 0, 1)),
             (f"D{k + 1}", _difference(x_swap - x_adv))]
  plotting.save_png(plotting.image_grid(rows, cell_inches=1.1), path, dpi=120)


def svd_study(model, variables, config: ml_collections.ConfigDict, data: Points,
              subset_size: Optional[int] = None, directory: Optional[str] = None,
              hosts: Optional[Hosts] = None) -> dict:
  """Runs `config.evaluation.svd_study`: per attack, accuracy on x_adv and on x_swap.

  Args:
    model, variables, data, subset_size, hosts: as `robustness.evaluate_robustness`
      (several hosts: each its share, the verdicts gathered; the same summary on each).
    config: reads `config.evaluation` (threat models, seed, batch size) and its
      `svd_study` block (attacks, grid_attacks, grid_images).
    directory: if given, the JSON, Markdown and the two PNGs are written there and the
      table printed (by process 0 only).

  Returns:
    {"num_points", "clean_accuracy", "results": [{name, label, norm, eps, accuracy_adv,
    accuracy_swap}], "files": [...]} (`files`: empty on the other processes).
  Raises:
    ValueError: given images not finite or not in [0, 1] (`threat_model.check_images`);
      ConfigError: a radius or step size outside [0, 1] pixel units (8 for 8/255), before
      anything is compiled.
  """
  evaluation, study = config.evaluation, config.evaluation.svd_study
  hosts = current_hosts() if hosts is None else hosts
  x, y, index, total = load_share(data, evaluation, subset_size, hosts)
  validate_threat_models(evaluation, x.shape[1:])  # ε in pixel units, before any compile.
  fn, batch_size = logits_fn(model, parallel.host_local(variables)), evaluation.batch_size
  clean_correct = predict(fn, x, batch_size) == y
  clean = float(np.mean(gather_points(clean_correct, index, total, hosts)))
  # Fig. 2's images: the first `grid_images` points of the evaluation, wherever they are.
  shown = min(study.grid_images, total)
  in_grid = index < shown
  grid = lambda tree: gather_points(jax.tree_util.tree_map(lambda a: a[in_grid], tree),
                                    index[in_grid], shown, hosts)
  results, pictures = [], {}
  log = ProgressLog(host=f"host {hosts.index + 1}/{hosts.count}" if hosts.count > 1 else "")
  for name in study.attacks:
    spec = parse_spec(name, evaluation)
    # Only the points still robust are attacked: a clean error's x_adv is x itself.
    outcome = run_attack(build_attack(spec, evaluation), fn, x, y,
                         attack_key(evaluation.seed, name), batch_size, clean_correct,
                         index=index, progress=log.attack(name))
    correct_adv, correct_swap, x_swap = swap_correct(fn, outcome.x_adv, x, y, batch_size)
    correct_adv, correct_swap = gather_points((correct_adv, correct_swap), index, total,
                                              hosts)
    results.append({"name": name, "label": spec.label, "norm": spec.norm, "eps": spec.eps,
                    "accuracy_adv": float(np.mean(correct_adv)),
                    "accuracy_swap": float(np.mean(correct_swap))})
    if name in study.grid_attacks:
      pictures[spec.label] = grid((outcome.x_adv, x_swap))
  summary = {"num_points": int(total), "seed": int(evaluation.seed),
             "clean_accuracy": clean, "results": results, "files": []}
  if directory is not None:
    images = grid(x)  # A collective with several hosts: each takes part.
    if hosts.index == 0:
      summary["files"] = _write(summary, images, pictures, directory)
  return summary


def to_markdown(summary: dict) -> str:
  lines = ["# SVD swap study (paper §3.1, Fig. 1)", "",
           f"{summary['num_points']} test points, clean accuracy "
           f"{100 * summary['clean_accuracy']:.2f}%.", "", markdown.table(
               ["attack", "norm", "accuracy on x_adv (%)", "accuracy on x_swap (%)", "gain"],
               [[r["label"], r["norm"], f"{100 * r['accuracy_adv']:.2f}",
                 f"{100 * r['accuracy_swap']:.2f}",
                 f"{100 * (r['accuracy_swap'] - r['accuracy_adv']):+.2f}"]
                for r in summary["results"]])]
  return "\n".join(lines) + "\n"


def _write(summary: dict, x: np.ndarray, pictures: dict, directory: str) -> list[str]:
  os.makedirs(directory, exist_ok=True)
  paths = [os.path.join(directory, name) for name in
           ("svd_study.json", "svd_study.md", "svd_study_accuracy.png",
            "svd_study_images.png")]
  summary = {**summary, "files": paths}
  with open(paths[0], "w") as f:
    json.dump(summary, f, indent=2)
  markdown = to_markdown(summary)
  with open(paths[1], "w") as f:
    f.write(markdown)
  plot_accuracy(summary["results"], summary["clean_accuracy"], paths[2])
  if pictures:
    plot_grid(x, pictures, paths[3])
  print(markdown)
  return paths if pictures else paths[:3]
