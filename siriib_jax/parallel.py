"""Data parallelism over a device mesh: one code path for 1 CPU, 8 GPUs or a TPU pod.

The global batch is sharded along the mesh's `data` axis and the train state is
replicated; `jax.jit` partitions the step (BatchNorm statistics become global means,
i.e. synchronised over devices). Several hosts join through `jax.distributed.initialize()`
before anything else touches a device (`main.py --multihost`).
"""

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh over `devices`, by default every device of every host."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles each host's part of the batch (numpy, leading axis B / process_count) into
  global arrays sharded over the mesh."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
