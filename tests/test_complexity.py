"""Parameter and MAC counts reproduce SPEC §6 / the paper's Tables 3 and 5."""

import pytest

from siriib_jax.complexity import count_complexity
from siriib_jax.models import create_model

# (backbone, SiRIIB variant or None, params M, MACs G, params tolerance M)
SPEC_TABLE = [
    ("resnet18", None, 11.17, 0.56, 0.01),
    ("resnet18", "base", 11.35, 0.73, 0.01),
    ("wrn28_10", None, 36.48, 5.25, 0.01),
    ("wrn28_10", "base", 36.79, 5.57, 0.01),
    ("wrn28_10", "L", 37.89, 6.70, 0.05),
    ("wrn28_10", "XL", 38.81, 7.65, 0.05),
]


@pytest.mark.parametrize("name,variant,params_m,macs_g,params_tol", SPEC_TABLE)
def test_counts_match_spec(config, name, variant, params_m, macs_g, params_tol):
  config.model.name = name
  config.model.siriib.enabled = variant is not None
  config.model.siriib.variant = variant or "base"
  counts = count_complexity(create_model(config.model, 32), 32)
  assert abs(counts.params / 1e6 - params_m) <= params_tol + 5e-3
  assert abs(counts.macs / 1e9 - macs_g) <= 0.02


def test_exact_plain_resnet18_counts(config):
  config.model.siriib.enabled = False
  counts = count_complexity(create_model(config.model, 32), 32)
  # 3×3 stem, 4 stages of 2 basic blocks, dense head: the torchvision-style CIFAR count.
  assert counts.params == 11_173_962
  assert counts.macs == 555_422_720
