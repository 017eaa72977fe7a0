"""Entry point, as in flax `examples/imagenet` (`siriib-jax` once installed, same flags):

    python main.py --config configs/cifar10_r18.py --workdir /tmp/r18 [--config.num_epochs=1]

Modes:
  train       train the configured model and strategy (resumes from `workdir`).
  complexity  print the parameters and MACs of the configured model (no workdir needed).
              `python -m siriib_jax.complexity` prints the rows of the paper's Tables 3, 5.
  eval        evaluate the run's checkpoint (`config.evaluation`): robustness table and
              masking checklist in `workdir/evaluation/` (docs/evaluation.md).
  export      write the run's checkpoint as PyTorch-named tensors (safetensors) and its
              architecture in `workdir/export/` (siriib_jax/export.py).
  svd_study   the SVD swap study of paper §3.1 (Fig. 1-2) in `workdir/evaluation/`.
  paper       the paper's tables and figures from this run and `config.paper.runs`
              (docs/paper.md) in `workdir/paper/`.
"""

from siriib_jax import cli

if __name__ == "__main__":
  cli.run()
