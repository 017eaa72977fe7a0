"""Do a trained SiRIIB run's skip features f_i still depend on the input? (RESULTS.md,
"Collapse of the skip features").

For each workdir (a finished training run with its `config.json`), on the first 200 real
CIFAR-10 test images (`../shared/data`) in eval mode: per f_i, the mean |f_i|, its standard
deviation over the images (averaged over positions and channels) and the mean |f_i(x + δ) −
f_i(x)| for uniform δ in the 8/255 L∞ ball; the spread of x_avg over the images; and c(·)'s
last BatchNorm (mean γ, mean β, fraction of channels with β > 0).

    python bench/skip_features.py WORKDIR [WORKDIR ...]
"""

import pathlib
import sys

import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO.parent / "shared" / "data"))

import cifar  # pylint: disable=wrong-import-position
from siriib_jax import run_config  # pylint: disable=wrong-import-position
from siriib_jax.checkpointing import load_variables  # pylint: disable=wrong-import-position
from siriib_jax.configs import default  # pylint: disable=wrong-import-position
from siriib_jax.models import create_model  # pylint: disable=wrong-import-position


def main(workdirs):
  images, _ = cifar.load("cifar10", "test")
  x = np.asarray(images[:200], np.float32) / 255.0
  delta = np.random.default_rng(0).uniform(-8 / 255, 8 / 255, x.shape).astype(np.float32)
  x_near = np.clip(x + delta, 0.0, 1.0)
  for workdir in workdirs:
    config = run_config.load(workdir, default.get_config())
    model = create_model(config.model, 32)
    variables, step = load_variables(workdir, "last")
    out = model.apply(variables, jnp.asarray(x), train=False)
    near = model.apply(variables, jnp.asarray(x_near), train=False)
    print(f"{workdir} (step {step}): x_avg spread over images "
          f"{np.asarray(out.x_avg).std(axis=0).mean():.3g}")
    for i, (f, g) in enumerate(zip(out.features, near.features)):
      f, g = np.asarray(f, np.float64), np.asarray(g, np.float64)
      print(f"  f{i}: mean |f| {np.abs(f).mean():.3g}, spread over images "
            f"{f.std(axis=0).mean():.3g}, mean |f(x+δ) − f(x)| {np.abs(f - g).mean():.3g}")
    extractor = variables["params"]["siriib"]["extractor"]
    last = sorted(name for name in extractor if name.startswith("bn"))[-1]
    gamma, beta = np.asarray(extractor[last]["scale"]), np.asarray(extractor[last]["bias"])
    print(f"  c(·) {last}: mean γ {gamma.mean():.3g}, mean β {beta.mean():.3g}, "
          f"β > 0 in {np.mean(beta > 0):.0%} of channels")


if __name__ == "__main__":
  main(sys.argv[1:])
