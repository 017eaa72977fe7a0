"""The train step's inputs with the batch split over devices: the augmented images and the
inner attack's random start are bit-identical on 2 devices and on 1 (keys are functions of
the step, the random values of the global position), and with a tiny attack ε ResNet-18-SR's
x_adv and its loss agree to rounding — the premise of tests/test_train_multihost.py.

At the training ε they need not: 2 devices add the data-parallel sums in another order, and
a rounding-level difference can flip a ReLU gate, whose input gradient then flips the sign
step at a few pixels (measured: 25 of 24576 pixels, L_ori of step 1 off by 1e-3; see that
file's docstring). Runs in a subprocess with two forced CPU devices; about a minute.
"""

from tests.helpers import run_on_forced_devices, write_npz_dataset

_SCRIPT = """
import jax.numpy as jnp, numpy as np
from siriib_jax import losses, parallel
from siriib_jax.attacks.gradients import random_start
from siriib_jax.data import InputPipeline, augment
from siriib_jax.models import create_model
from siriib_jax.models.model_fn import logits_fn
from siriib_jax.training.strategies import get_strategy
from siriib_jax.training.state import create_train_state
from tests.helpers import tiny_training_config
config = tiny_training_config({data!r})
config.strategy = "pgd_at"
config.attack.eps = config.attack.step_size = 1e-5
model = create_model(config.model, 32)
strategy = get_strategy(config)
data = InputPipeline(config.dataset, global_batch_size=8, seed=config.seed, process_index=0,
                     process_count=1)
init_key, train_key, _ = jax.random.split(jax.random.key(config.seed), 3)
state = jax.device_get(jax.jit(lambda key: create_train_state(
    model, config, key, data.image_shape, data.steps_per_epoch, data.num_train_examples,
    strategy))(init_key))

def inputs(state, batch, key):  # As train_step.make_train_step's step 0.
  augment_key, attack_key = jax.random.split(jax.random.fold_in(key, state.step))
  x, y = augment(augment_key, batch["image"]), batch["label"]
  f = logits_fn(model, {{"params": state.params, "batch_stats": state.batch_stats}}, "train")
  start = random_start(jax.random.split(attack_key, 1)[0], x, config.attack.eps, "linf")
  x_adv = strategy.attack(f, x, y, attack_key, None)
  return x, start, x_adv, losses.cross_entropy(f(x_adv), y)

results = []
for devices in (jax.devices()[:1], jax.devices()):
  mesh = parallel.data_mesh(devices)
  step = jax.jit(inputs, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh),
                                       parallel.replicated(mesh)),
                 out_shardings=parallel.replicated(mesh))
  results.append(jax.device_get(step(state, data.train_batch(0), train_key)))
(x1, start1, adv1, loss1), (x2, start2, adv2, loss2) = results
np.testing.assert_array_equal(x1, x2)
np.testing.assert_array_equal(start1, start2)
print("x_adv", np.abs(adv1 - adv2).max(), "loss", np.abs(loss1 - loss2).max())
assert np.abs(adv1 - adv2).max() <= 2 * config.attack.step_size + 1e-7
np.testing.assert_allclose(loss1, loss2, rtol=1e-5)
print("OK")
"""


def test_step_inputs_on_2_devices_equal_1_device(tmp_path):
  data = write_npz_dataset(tmp_path / "data")
  run_on_forced_devices(_SCRIPT.format(data=data), devices=2)
