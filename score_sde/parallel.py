"""Data parallelism over a device mesh: batches split over the 'data' axis, everything else replicated.

The same code runs on one CPU, one GPU, all cores of a TPU host, or a multi-host pod (after
`jax.distributed.initialize()`): each process feeds its own slice of the global batch.
"""
import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh():
  """A 1-D mesh over every device of every process.

  Axis type Auto: XLA propagates the batch sharding through the networks (explicit sharding would ask every
  reshape inside them to name its output sharding).
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices())


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharding(mesh, leading_axes=0):
  """Shards axis `leading_axes` (the batch axis) over the mesh; axes before it (e.g. a scan axis) are whole."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def global_batch(tree, sharding, batch_axis=0):
  """Assembles each process's local slice (numpy) into one global, batch-sharded jax.Array per leaf."""

  def _assemble(local):
    local = np.asarray(local)
    shape = list(local.shape)
    shape[batch_axis] *= jax.process_count()
    return jax.make_array_from_process_local_data(sharding, local, tuple(shape))

  return jax.tree_util.tree_map(_assemble, tree)


def abstract_with_sharding(tree, sharding):
  """ShapeDtypeStructs carrying `sharding`, the restore target for a checkpoint of `tree`."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def sampler_sharding(mesh):
  """The batch sharding samplers constrain their prior draw and loop state to (`sampling.get_sampling_fn(...,
  sharding=)`), or None on a single device, where there is nothing to split (and host-bound solvers such as
  scipy's RK45 cross-check stay usable)."""
  return batch_sharding(mesh) if mesh.size > 1 else None


def process0_decides(value):
  """`value` as process 0 has it, on every process (a bool or an int): whether a unit of work is already on disk
  is decided once, so that every process joins the same compiled computations (a process that skipped one would
  leave the others waiting in its collectives)."""
  if jax.process_count() == 1:
    return value
  return type(value)(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def put_batch(x, mesh):
  """A host array that every process holds whole -> a global jax.Array, split over the mesh along axis 0 when
  that axis divides evenly over its devices (each device then computes its part of the batch), else
  replicated."""
  x = np.asarray(x)
  divisible = x.ndim and x.shape[0] % mesh.size == 0
  sharding = batch_sharding(mesh) if divisible else replicated(mesh)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x):
  """The whole value of a (possibly multi-process) jax.Array as numpy, on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
