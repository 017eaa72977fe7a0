"""Training's library: the fused step (`step`), the train state (`state`), the strategies
and the optimiser; `siriib_jax/train.py` is its command."""
