"""Quickstart: a small ResNet-18-SR (every width × 1/8, SiRIIB's included), TRADES with the
SiRIIB terms on the CIFAR-10 sample embedded in the package — offline, ending with a
robustness table (clean, PGD-20, AutoAttack) on a stratified subset of its test images.

Sized for about ten minutes on a quiet 2-core CPU (measured times in README.md): TRADES,
whose clean cross-entropy term leaves the chance-level plateau within a few dozen steps,
where PGD-AT at this budget often does not (measured: RESULTS.md); a lighter inner attack
for training (3 steps of α = 3/255 instead of 10 of 2/255) and validation (PGD-10); 3
epochs; and the final AutoAttack on 20 test points — each point it cannot break costs
9 × 100 APGD-T and FAB-T steps and 5000 Square queries, about a minute here.

    python main.py --config configs/quickstart.py --workdir /tmp/siriib_quickstart
"""

from siriib_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = "cifar10_sample"
  config.dataset.validation_size = 100
  config.strategy = "trades"
  config.model.width_multiplier = 0.125
  config.attack.steps = 3
  config.attack.step_size = 3 / 255
  config.eval_pgd_steps = 10
  config.num_epochs = 3
  config.batch_size = 64
  config.optimizer.learning_rate = 0.05
  config.optimizer.decay_epochs = (2,)
  config.log_every_steps = 10
  config.keep_checkpoints = 2
  config.final_eval_size = 20
  # --mode=paper on quickstart-sized runs (docs/paper.md): few points, so a CPU run stays
  # short; the figures show 8 of them.
  config.paper.num_points = 50
  config.paper.tsne_points = 50
  config.paper.corruption_points = 20
  return config
