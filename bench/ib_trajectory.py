"""Does SiRIIB's IB path collapse at the paper's full width? (RESULTS.md, "The IB path at
full width").

Trains the paper's ResNet-18-SR (`configs/cifar10_r18.py`: full width, c(·) at 16/32/64
channels, PGD-AT) on the real CIFAR-10 training images (`../shared/data`, all 50,000 unless
`--train_size`), with `--batch_size` and a `--attack_steps`-step inner attack (the paper's
10 cost ~6× more per step on a CPU), for `--steps` steps, logging every `--log_every`; a
checkpoint every `--log_every` steps makes the run resumable (rerun the same command; a
SIGTERM, e.g. from `timeout -s TERM`, checkpoints and exits). Then prints, from the run's
TensorBoard events, the trajectory of `f_spread`, `ib_dead_fraction`, `l_info`, `loss_ori`
and the adversarial training accuracy, and writes it to `--out/trajectory.json`.

    timeout -s TERM 2400 python bench/ib_trajectory.py --out /work/ib_full --steps 300
"""

import argparse
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from reproduce import write_data  # noqa: E402  pylint: disable=wrong-import-position
from siriib_jax.configs import cifar10_r18  # noqa: E402  pylint: disable=wrong-import-position
from siriib_jax.runtime import configure_process  # noqa: E402
from siriib_jax.train import train_and_evaluate  # noqa: E402

METRICS = ("f_spread", "ib_dead_fraction", "l_info", "l_svd", "loss_ori", "accuracy_adv")


def read_trajectory(workdir: pathlib.Path) -> dict:
  """step -> {metric: value} of the `train/<metric>` scalars in `workdir`'s events."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {}
  for path in sorted(workdir.glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        name = value.tag.removeprefix("train/")
        if value.tag.startswith("train/") and name in METRICS:
          number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
              else value.simple_value
          out.setdefault(int(event.step), {})[name] = number
  return dict(sorted(out.items()))


def main():
  configure_process()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--shared", type=pathlib.Path, default=REPO.parent / "shared" / "data")
  parser.add_argument("--train_size", type=int, default=50000)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--attack_steps", type=int, default=3)
  parser.add_argument("--log_every", type=int, default=10)
  parser.add_argument("--guard", default="none", help="model.siriib.guard")
  parser.add_argument("--width", type=float, default=1.0, help="1: the paper's width")
  args = parser.parse_args()

  config = cifar10_r18.get_config()
  config.dataset.name = "npz"
  config.dataset.data_dir = write_data(args.out, args.train_size, args.shared)
  config.dataset.validation_size = 500
  config.model.width_multiplier = args.width
  config.model.siriib.guard = args.guard
  config.batch_size = args.batch_size
  config.attack.steps = args.attack_steps
  config.max_steps = args.steps
  config.log_every_steps = args.log_every
  config.checkpoint_every_steps = args.log_every
  config.keep_checkpoints = 1
  config.final_eval_size = 0
  workdir = args.out / "run"
  summary = train_and_evaluate(config, str(workdir))
  trajectory = read_trajectory(workdir)
  (args.out / "trajectory.json").write_text(json.dumps(
      {"status": summary["status"], "step": summary["step"], "ib_path": summary.get("ib_path"),
       "args": {k: str(v) for k, v in vars(args).items()}, "trajectory": trajectory},
      indent=1))
  print(f"status {summary['status']} at step {summary['step']}; IB path on the validation "
        f"images: {summary.get('ib_path')}")
  print("| step | " + " | ".join(METRICS) + " |\n|" + "---|" * (len(METRICS) + 1))
  for step, values in trajectory.items():
    print(f"| {step} | " + " | ".join(
        f"{values[m]:.4g}" if m in values and np.isfinite(values[m]) else "—"
        for m in METRICS) + " |")


if __name__ == "__main__":
  main()
