"""Isometry of the SR blocks' W over a training run (issue 14, RESULTS.md "Isometry of W").

For every checkpoint in `WORKDIR/checkpoints/last` (train with
`--config.checkpoint_every_steps=10 --config.keep_checkpoints=200` to keep them all) and
every SR block: ‖W Wᵀ − I‖_F, ‖W‖_F, the norm of the stored parameter (A in "exact"
mode, whose W = polar(A) is scale-invariant, so A's growth is SGD's lr²‖g‖² alone), W's
singular values, |u_1 · grey| for W's top left singular vector, and the curvature of the
penalty λ2 ‖W Wᵀ − I‖²_F along W's largest singular direction, 4 λ2 (3 σ_max² − 1), beside
SGD-with-momentum's stability limit 2 (1 + β) / lr. At the last checkpoint: how far
y = x · W moves the singular values of real CIFAR-10 test images' channel × pixel
matrices (each image resized bilinearly to the block's scale, as SiRIIB does): the
relative error ‖σ(y) − σ(x)‖ / ‖σ(x)‖ of the 3 singular values (per-value ratios are
meaningless for grey images, whose σ_2 = σ_3 = 0), the gain ‖σ(y)‖ / ‖σ(x)‖, and the
shape error ‖σ(y)/‖σ(y)‖ − σ(x)/‖σ(x)‖‖ (what a global rescaling, which the fuse
BatchNorm can absorb, does not explain).

    python bench/isometry.py --workdir /tmp/qs_penalty --config configs/quickstart.py \
        [--images 1000] [--json out.json]

Reads ../shared/data (benchmarks only; the product never does).
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "..", "shared", "data"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--config", default="configs/quickstart.py")
  parser.add_argument("--images", type=int, default=1000)
  parser.add_argument("--json", default="")
  args = parser.parse_args()

  import flax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  import cifar  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # noqa: F401  pylint: disable=unused-import
  from siriib_jax.models.siriib import (  # pylint: disable=import-outside-toplevel
      ORTHOGONAL_MODULE, resize_bilinear, sr_weight_matrices)

  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("cfg", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  lr, beta, lambda2 = (config.optimizer.learning_rate, config.optimizer.momentum,
                       config.loss.lambda2)
  scales = tuple(config.model.siriib.scales)

  root = os.path.join(os.path.abspath(args.workdir), "checkpoints", "last")
  manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps())
  trajectory = []
  params = None
  for step in steps:
    params = manager.restore(step)["params"]
    row = {"step": int(step), "blocks": {}}
    stored = {"/".join(path[:-2]): np.asarray(leaf) for path, leaf in
              flax.traverse_util.flatten_dict(params).items()
              if path[-1] == "kernel" and path[-2] in ORTHOGONAL_MODULE.values()}
    for name, w in sorted(sr_weight_matrices(params).items()):
      w = np.asarray(w, np.float64)
      u, sigma, _ = np.linalg.svd(w, full_matrices=False)
      row["blocks"][name] = {
          "parameter_norm": float(np.linalg.norm(stored[name])),
          "top_direction_vs_grey": float(abs(u[:, 0] @ np.ones(3)) / np.sqrt(3)),
          "orth_error": float(np.linalg.norm(w @ w.T - np.eye(3))),
          "w_norm": float(np.linalg.norm(w)), "sigma": [float(s) for s in sigma],
          "penalty_curvature": float(4 * lambda2 * (3 * sigma[0] ** 2 - 1))}
    trajectory.append(row)
    blocks = row["blocks"]
    print(f"step {step:4d}  " + "  ".join(
        f"{n.split('/')[-1]}: err {b['orth_error']:7.3g} |W| {b['w_norm']:5.2f} "
        f"|param| {b['parameter_norm']:5.2f} σ {b['sigma'][0]:.2f}/{b['sigma'][2]:.2f} "
        f"u1·grey {b['top_direction_vs_grey']:.2f}" for n, b in blocks.items()))
  limit = 2 * (1 + beta) / lr
  print(f"SGD-momentum stability limit 2(1+β)/lr = {limit:.1f}; largest penalty curvature "
        f"seen {max(b['penalty_curvature'] for r in trajectory for b in r['blocks'].values()):.3g}")

  images, _ = cifar.load("cifar10", "test")
  rng = np.random.default_rng(0)
  x = images[rng.choice(len(images), args.images, replace=False)].astype(np.float32) / 255
  spectra = {}
  for i, (name, w) in enumerate(sorted(sr_weight_matrices(params).items())):
    xs = np.asarray(resize_bilinear(jax.numpy.asarray(x), scales[i]), np.float64)
    m = np.swapaxes(xs.reshape(len(xs), -1, 3), 1, 2)  # (B, 3, pixels)
    y = np.einsum("cd,bcp->bdp", np.asarray(w, np.float64), m)  # Wᵀ M: (B, 12, pixels)
    sx = np.linalg.svd(m, compute_uv=False)
    sy = np.linalg.svd(y, compute_uv=False)[:, :3]
    norm_x, norm_y = np.linalg.norm(sx, axis=1), np.linalg.norm(sy, axis=1)
    rel = np.linalg.norm(sy - sx, axis=1) / norm_x
    shape = np.linalg.norm(sy / norm_y[:, None] - sx / norm_x[:, None], axis=1)
    colourful = sx[:, 2] >= 1e-2 * sx[:, 0]  # Per-value ratios only where σ_3 is not ~0.
    per_value = np.median(np.abs(sy - sx)[colourful] / sx[colourful], axis=0)
    stats = lambda v: {"median": float(np.median(v)), "p95": float(np.percentile(v, 95)),
                       "max": float(np.max(v))}
    spectra[name] = {"scale": scales[i], "relative_error": stats(rel),
                     "shape_error": stats(shape), "gain": stats(norm_y / norm_x),
                     "per_value_median_colourful": [float(v) for v in per_value],
                     "colourful_images": int(colourful.sum())}
    s = spectra[name]
    print(f"{name} ({scales[i]}²): ‖σ(y) − σ(x)‖/‖σ(x)‖ median {s['relative_error']['median']:.3g}"
          f" p95 {s['relative_error']['p95']:.3g} max {s['relative_error']['max']:.3g}; "
          f"gain ‖σ(y)‖/‖σ(x)‖ median {s['gain']['median']:.3g}; shape ‖σ̂(y) − σ̂(x)‖ median "
          f"{s['shape_error']['median']:.3g} max {s['shape_error']['max']:.3g}; "
          f"|Δσ_i|/σ_i median (σ_3 ≥ 0.01 σ_1: {s['colourful_images']} images) "
          + " ".join(f"{v:.3g}" for v in s["per_value_median_colourful"]))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"workdir": args.workdir, "stability_limit": limit, "trajectory": trajectory,
                 "spectra": spectra, "images": args.images}, f, indent=1)


if __name__ == "__main__":
  main()
