"""Quickstart of the grey-box purifier (paper App. C.5, Table 8; docs/purification.md): the
quickstart's run (`configs/quickstart.py`: ResNet-18 × 1/8, TRADES, the embedded CIFAR-10
sample, 3 epochs) with `model.siriib.placement = "purifier"` — the backbone trains alone
with TRADES, and beside it the SR blocks of every scale (x_avg, without c(·) or the p_i)
are fitted with λ1 L_svd(x_avg(x_adv), x) on the adversarial examples of that same
training, connected to nothing. The final robustness table is the backbone's alone; Table
8 comes from `siriib_jax.evaluation.purification.purification_table` on the checkpoint.

    python main.py --config configs/quickstart_purifier.py --workdir /tmp/siriib_purifier
"""

from siriib_jax.configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.model.siriib.enabled = True
  config.model.siriib.placement = "purifier"
  return config
