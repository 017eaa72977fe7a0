"""Data: TFDS / .npz / embedded-sample sources, a resumable per-host loader, augmentation.

See docs/data.md. Typical use:

  validate_dataset_config(config.dataset, global_batch_size=config.batch_size)
  data = InputPipeline(config.dataset, global_batch_size=..., seed=config.seed)
  for step, batch in zip(range(start_step, num_steps), data.train_batches(start_step)):
    images = augment(key, batch["image"])  # inside the jitted step
  for batch in data.eval_batches("validation"):  # batch["mask"] marks padding
    ...
"""

from siriib_jax.data.arrays import Arrays
from siriib_jax.data.arrays import load_npz
from siriib_jax.data.augment import augment
from siriib_jax.data.augment import to_float
from siriib_jax.data.loader import InputPipeline
from siriib_jax.data.sources import DatasetNotFoundError
from siriib_jax.data.sources import load_split
from siriib_jax.data.specs import DATASETS
from siriib_jax.data.specs import validate_dataset_config
from siriib_jax.data.splits import epoch_permutation
from siriib_jax.data.splits import stratified_subset
