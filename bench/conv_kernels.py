"""One 3×3 convolution, stride 1, SAME: XLA:CPU (as siriib_jax runs it: Eigen, `xla_cpu.py`)
against PyTorch (oneDNN), alone and followed by an inference BatchNorm and ReLU, at the
shapes of ResNet-18's stages at 1/8 width (C = 8, 16, 32, 64) and one full-width stage.

Reported per shape: milliseconds (median of `--repeats` alternated rounds of `--calls`),
the rate in GFLOP/s (2 · B · H · W · 9 · C² flops) and the ratio XLA / PyTorch. Both on
every core (PyTorch's `torch.get_num_threads()`, XLA's CPU client).

    python bench/conv_kernels.py --batch 200
"""

import argparse
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from siriib_jax.runtime import configure_process  # pylint: disable=wrong-import-position

configure_process()  # As main.py runs; before JAX initialises its backends.

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position
import torch.nn.functional as F  # pylint: disable=wrong-import-position

from timing import median_seconds  # pylint: disable=wrong-import-position

SHAPES = ((32, 8), (16, 16), (8, 32), (4, 64), (32, 64))  # (H = W, C)
_NHWC = ("NHWC", "HWIO", "NHWC")


def measure(batch: int, side: int, channels: int, repeats: int, calls: int) -> dict:
  """Milliseconds of the convolution alone and with BatchNorm + ReLU, both frameworks."""
  rng = np.random.default_rng(0)
  x = rng.random((batch, side, side, channels), np.float32)
  w = rng.standard_normal((3, 3, channels, channels), np.float32) / 3
  scale = rng.random(channels, np.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=_NHWC)
  xla_conv = jax.jit(conv)
  xla_block = jax.jit(lambda x, w, s: jax.nn.relu(conv(x, w) * s + s))
  x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  w_t = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
  s_t = torch.from_numpy(scale)
  with torch.no_grad():
    seconds = median_seconds({
        "xla": lambda: xla_conv(x, w).block_until_ready(),
        "xla_bn_relu": lambda: xla_block(x, w, scale).block_until_ready(),
        "torch": lambda: F.conv2d(x_t, w_t, padding=1),
        "torch_bn_relu": lambda: torch.relu(F.batch_norm(F.conv2d(x_t, w_t, padding=1),
                                                         s_t, s_t, s_t, s_t, False)),
    }, repeats, calls)
  ms = {name: t * 1e3 for name, t in seconds.items()}
  gflop = 2 * batch * side * side * 9 * channels ** 2 / 1e9
  return {"batch": batch, "side": side, "channels": channels, **ms,
          "xla_gflops": gflop / ms["xla"] * 1e3, "torch_gflops": gflop / ms["torch"] * 1e3,
          "ratio": ms["xla"] / ms["torch"],
          "ratio_bn_relu": ms["xla_bn_relu"] / ms["torch_bn_relu"]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=200)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--calls", type=int, default=10)
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  out = {"torch_threads": torch.get_num_threads(), "xla_threads": os.cpu_count(),
         "rows": [measure(args.batch, side, c, args.repeats, args.calls) for side, c in SHAPES]}
  for row in out["rows"]:
    print(json.dumps(row), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
