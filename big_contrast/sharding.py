"""Device mesh from the config, partition rules, global batch assembly."""
import math
import re
from typing import Sequence

from absl import logging
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

# Mesh axes over which the batch dimension is split, in this order.
BATCH_AXES = ("data", "fsdp")


def make_mesh(axes: Sequence[tuple[str, int]], devices=None) -> jax.sharding.Mesh:
  """Mesh from `config.mesh`, e.g. [("data", -1), ("fsdp", 1)]; -1 takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  names = [str(n) for n, _ in axes]
  sizes = [int(s) for _, s in axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={list(axes)} has more than one -1 axis; at most one "
                     "axis can take the remaining devices.")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % fixed:
      raise ValueError(f"config.mesh={list(axes)}: the fixed axes ({fixed}) do not divide "
                       f"the {len(devices)} devices.")
    sizes[sizes.index(-1)] = len(devices) // fixed
  n = math.prod(sizes)
  if n > len(devices):
    raise ValueError(f"config.mesh={list(axes)} needs {n} devices but only {len(devices)} "
                     "are available; shrink the axis sizes or use -1.")
  if n < len(devices):
    logging.warning("config.mesh uses %d of %d devices.", n, len(devices))
  return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names),
                       devices=devices[:n])


def batch_axes(mesh) -> tuple[str, ...]:
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def num_batch_shards(mesh) -> int:
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def check_batch_size(batch_size: int, mesh, key: str = "config.batch_size"):
  """Raises before any compile if the global batch cannot be split evenly."""
  n, hosts = num_batch_shards(mesh), jax.process_count()
  if batch_size % n or batch_size % hosts:
    raise ValueError(f"{key}={batch_size} is not divisible by the {n} data-parallel shards "
                     f"(mesh {dict(mesh.shape)}) and {hosts} process(es); use a multiple of "
                     f"{math.lcm(n, hosts)}.")


def path_name(path) -> str:
  """A pytree path as "a/b/c", the names regex rules match against."""
  names = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
  return "/".join(str(n) for n in names)


def param_shardings(tree, mesh, rules=(), min_size: int = 2**14):
  """NamedShardings for a pytree from regex rules on its '/'-joined paths.

  The first rule whose regex matches (re.fullmatch) a leaf's path gives its
  PartitionSpec; leaves with fewer than `min_size` elements, whose dimensions
  do not divide by the named axes, or matching no rule are replicated.
  """
  def spec(path, leaf):
    name = path_name(path)
    shape = getattr(leaf, "shape", ())
    if math.prod(shape) < min_size:
      return NamedSharding(mesh, P())
    for pattern, axes in rules:
      if re.fullmatch(pattern, name):
        axes = tuple(axes) + (None,) * (len(shape) - len(axes))
        fits = len(axes) == len(shape) and all(
            a is None or shape[i] % math.prod(mesh.shape[x] for x in np.atleast_1d(a)) == 0
            for i, a in enumerate(axes))
        return NamedSharding(mesh, P(*axes)) if fits else NamedSharding(mesh, P())
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(spec, tree)


def global_batch(local_batch: dict, mesh) -> dict:
  """Host-local numpy arrays -> global jax arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
