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


def local_mesh(mesh: Mesh) -> Mesh:
  """`mesh` itself when all its devices belong to this process, else a data mesh over
  those that do (for work on host-local arrays, e.g. each host's share of an evaluation).

  Raises:
    ValueError: none of `mesh`'s devices belongs to this process.
  """
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  if len(local) == mesh.devices.size:
    return mesh
  if not local:
    raise ValueError("The mesh has no device of this process.")
  return data_mesh(local)


def host_local(tree):
  """`tree` with every array that spans other processes' devices (replicated there: e.g.
  variables restored on several hosts, or training's state) replaced by this process's
  copy, for computations on this host's devices alone; other leaves as they are.

  Raises:
    ValueError: such an array is not fully replicated (its value is not all here).
  """
  def local(leaf):
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
      return leaf
    if not leaf.sharding.is_fully_replicated:
      raise ValueError(f"An array of shape {leaf.shape} is split over several processes; "
                       "only replicated ones have their whole value on each.")
    return leaf.addressable_data(0)
  return jax.tree.map(local, tree)
