"""Helpers shared by the tests: tiny training configs and datasets written on the fly.

Fixtures live in `conftest.py`; plain functions live here and are imported as
`from tests.helpers import ...`.
"""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from siriib_jax.configs import default
from siriib_jax.models import ModelOutput, logits_fn


def tiny_training_config(data_dir: str):
  """A config whose step compiles quickly: ResNet-18 × 1/8, two SiRIIB scales, a 1-step
  rolled attack, batch 8, on the `npz` dataset in `data_dir` (see `write_npz_dataset`)."""
  config = default.get_config()
  config.dataset.name = "npz"
  config.dataset.data_dir = data_dir
  config.dataset.validation_size = 10
  config.model.width_multiplier = 0.125
  config.model.siriib.scales = (32, 16)
  config.attack.steps = 1
  config.attack.unroll = False
  config.eval_pgd_steps = 1
  config.batch_size = 8
  config.num_epochs = 2
  config.log_every_steps = 1
  config.evaluation.skip_ablation = ("clean",)  # No PGD on the ablated model to compile.
  return config


def write_npz_dataset(directory, num_train: int = 34, num_test: int = 16, seed: int = 0):
  """Random 32×32 images with 10 balanced labels, as `{directory}/{train,test}.npz`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  for split, n in (("train", num_train), ("test", num_test)):
    np.savez(os.path.join(directory, f"{split}.npz"),
             image=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
             label=np.arange(n) % 10)
  return str(directory)


def register_prepared_cifar10(data_dir) -> None:
  """Writes cifar10's metadata under `data_dir` so that it counts as prepared; with
  `tfds.testing.mock_data(policy=USE_FILES, data_dir=...)` its examples are then mocked."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("cifar10", data_dir=data_dir)
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0)
      for s, n in (("train", 50000), ("test", 10000))]))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)


def linear_problem(classes: int, norm: str, n: int, shape=(4, 4, 3), seed: int = 0,
                   band: float = 0.1, eps_quantile: float = 0.5):
  """A random linear `classes`-class model on images of `shape` (weights centred over the
  pixels), n correctly classified points and ε, the `eps_quantile` quantile of their exact
  critical ε (`linear_oracle`).

  Points whose critical ε is within ±`band`·ε are dropped (the oracle is exact there, an
  attack on another loss may fall short by a hair). For L2 the points lie in [0.3, 0.7] and
  ε ≤ 0.3 is asserted, so the ball is inside the box and the oracle's closed form is exact.

  Returns:
    (w (D, K), b (K,), x (n, *shape), y (n,), eps, critical (n,)), NumPy float32 / int.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tests.linear_oracle import critical_eps  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  dim = int(np.prod(shape))
  w = rng.normal(size=(dim, classes))
  # Centred over the pixels, so that the distance to a decision boundary comes from how the
  # images differ, not from their common mean 0.5 (which put the L2 critical ε near 0.5 with
  # 2 classes, outside the range where the L2 oracle is exact).
  w = (w - w.mean(axis=0)).astype(np.float32)
  b = (0.1 * rng.normal(size=classes)).astype(np.float32)
  low = 0.3 if norm == "l2" else 0.0
  x = rng.uniform(low, 1 - low, size=(4 * n,) + tuple(shape)).astype(np.float32)
  y = np.argmax(x.reshape(len(x), -1) @ w + b, axis=1)
  critical = critical_eps(w, b, x, y, norm)
  eps = float(np.quantile(critical, eps_quantile))
  keep = np.flatnonzero(np.abs(critical / eps - 1) > band)[:n]
  assert len(keep) == n and (norm == "linf" or eps <= 0.3), (len(keep), eps)
  return w, b, x[keep], y[keep], eps, critical[keep]


# Small models for the evaluation tests.

class LinearClassifier(nn.Module):
  """A linear classifier on 8×8×3 images; `quantise` puts `round(4x) / 4` in front, whose
  gradient is zero almost everywhere (masked gradients, Athalye et al. 2018)."""
  quantise: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    del train
    if self.quantise:
      x = jnp.round(x * 4) / 4
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def self_labelled_points(model, n=32, seed=0):
  """Images in (0.2, 0.8) labelled with the model's own predictions (clean accuracy 1)."""
  x = np.random.default_rng(seed).uniform(0.2, 0.8, (n, 8, 8, 3)).astype(np.float32)
  variables = model.init(jax.random.key(seed), x[:1])
  return variables, x, np.asarray(jnp.argmax(logits_fn(model, variables)(x), -1))


def fast_evaluation(config):
  """`config` with a small evaluation: batch 32, Square 100 queries, PGD-10 for large ε,
  the skip ablation clean only."""
  e = config.evaluation
  e.batch_size, e.square_queries = 32, 100
  e.checklist.large_eps_attack = "pgd10"
  e.skip_ablation = ("clean",)
  return config


class SiriibLike(nn.Module):
  """The outputs of a SiRIIB classifier at a fraction of its compile time: `x_avg` =
  sigmoid(conv(x)), one skip feature `f = conv(x_avg)`, logits from x and f."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x_avg = nn.sigmoid(nn.Conv(3, (3, 3))(x))
    feature = nn.Conv(4, (3, 3))(x_avg)
    hidden = jnp.concatenate([x, feature], axis=-1).reshape(x.shape[0], -1)
    return ModelOutput(nn.Dense(10)(hidden), x_avg, (feature,))


def linear_attack_problem(n: int = 24, wrong: int = 3, seed: int = 0):
  """For the only-the-robust-points tests: a linear 10-class model (`linear_problem`, L∞,
  4×4×3 images) as a `Partial` logits function, n points of which the first `wrong` are
  relabelled (clean errors), and ε at the median critical ε (about half the rest break).

  Returns:
    (logits_fn, x (n, 4, 4, 3) float32, y (n,), eps, clean_correct (n,) bool).
  """
  from tests.linear_oracle import linear_logits  # pylint: disable=g-import-not-at-top
  w, b, x, y, eps, _ = linear_problem(10, "linf", n=n, seed=seed)
  y = y.copy()
  y[:wrong] = (y[:wrong] + 1) % 10
  fn = jax.tree_util.Partial(linear_logits, jnp.asarray(w), jnp.asarray(b))
  clean_correct = np.argmax(np.asarray(fn(x)), axis=1) == y
  return fn, x, y, eps, clean_correct


def assert_same_per_point(robust_only, every_point, clean_correct):
  """Two `batching.Outcome`s of one attack with the same key — only the robust points
  attacked, and every point — give the same success flags and the same x_adv on the
  points broken (clean errors keep x in both), up to float32 rounding (XLA compiles one
  program per chunk size, and FAB's arithmetic rounds differently in them by 1 ulp)."""
  np.testing.assert_array_equal(robust_only.success, every_point.success)
  broken = robust_only.success & clean_correct
  np.testing.assert_allclose(robust_only.x_adv[broken], every_point.x_adv[broken],
                             rtol=0, atol=1e-6)


def tiny_model(name: str = "resnet18", siriib: bool = True, size: int = 16, seed: int = 0):
  """A quickly compiled classifier for the analysis tests: `name` at width × 1/8, SiRIIB
  (scales size, size / 2) when `siriib`, 10 classes, on size × size images.

  Returns:
    (model, variables).
  """
  from siriib_jax.models import create_model  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model.name = name
  config.model.width_multiplier = 0.125
  config.model.siriib.enabled = siriib
  config.model.siriib.scales = (size, size // 2)
  model = create_model(config.model, size)
  # One compiled program, not op by op (several times faster on a loaded CPU).
  variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
  return model, variables


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FORCED_DEVICES_PREAMBLE = """
import os, sys
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count={devices} "
                           "--xla_backend_optimization_level=0 "  # And conftest's.
                           "--xla_llvm_disable_expensive_passes=true")
sys.path.insert(0, {repo!r})
from siriib_jax.runtime import configure_process
configure_process()
import jax
assert jax.device_count() == {devices}
"""


def run_on_forced_devices(script: str, devices: int, timeout: int = 600) -> str:
  """Runs `script` in a fresh Python process with `devices` forced CPU devices (the device
  count is fixed when JAX starts, so a test cannot change it in-process) and asserts it
  exits 0 having printed a line "OK". Returns its stdout."""
  source = _FORCED_DEVICES_PREAMBLE.format(devices=devices, repo=REPO) + script
  result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
  assert result.returncode == 0 and "OK" in result.stdout.splitlines(), (
      result.stdout[-2000:] + result.stderr[-3000:])
  return result.stdout
