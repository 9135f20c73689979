"""Device mesh from the config, partition rules, global batch assembly."""
import math
import re
from typing import Sequence

from absl import logging
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from big_contrast import models
from big_contrast import settings

# Mesh axes over which the batch dimension is split, in this order.
BATCH_AXES = ("data", "fsdp")
MESH_AXES = BATCH_AXES + ("tensor",)

# `config.sharding`: parameters and optimizer state are replicated unless a rule matches their
# path. rules: (regex, spec) pairs, spec a PartitionSpec tuple or an axis name for "the largest
# dimension it divides" (FSDP), or preset names "fsdp", "transformer_tp" (PRESETS). Leaves
# under min_size elements stay replicated.
SETTINGS = dict(rules=(), min_size=settings.integer(2**14, low=0))


def make_mesh(axes: Sequence[tuple[str, int]], devices=None) -> jax.sharding.Mesh:
  """Mesh from `config.mesh`, e.g. [("data", -1), ("fsdp", 1)]; -1 takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  names = [str(n) for n, _ in axes]
  sizes = [int(s) for _, s in axes]
  unknown = [n for n in names if n not in MESH_AXES]
  if unknown:
    raise ValueError(f"config.mesh={list(axes)} names axes {unknown}; mesh axes are "
                     f"{MESH_AXES} (e.g. (('data', -1),)).")
  if len(set(names)) < len(names):
    raise ValueError(f"config.mesh={list(axes)} names an axis twice; name each once.")
  if any(s < 1 and s != -1 for s in sizes):
    raise ValueError(f"config.mesh={list(axes)}: each axis size must be >= 1, or -1 for the "
                     "remaining devices.")
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


# Megatron-style tensor parallelism of the transformer blocks (models/vit.py Block, in the
# ViT and the text tower): attention split by heads, the MLP by its hidden units, so each
# block needs one all-reduce forward and one backward per half. The MAP head (one block
# over a single query) is left to FSDP: with both its tensor and fsdp splits, XLA's CPU
# partitioner (jax 0.10.2) computed a wrong loss (tests/sharding_test.py catches it).
# "block\d+" unrolled, "blocks/block" scanned (model.scan_layers).
_BLOCK = r".*(block\d+|blocks/block)"
TRANSFORMER_TP = (
    (_BLOCK + r"/MultiHeadDotProductAttention_0/(query|key|value)/kernel",
     (None, "tensor", None)),                                        # [D, heads, head_dim]
    (_BLOCK + r"/MultiHeadDotProductAttention_0/(query|key|value)/bias", ("tensor", None)),
    (_BLOCK + r"/MultiHeadDotProductAttention_0/out/kernel", ("tensor", None, None)),
    (_BLOCK + r"/Dense_0/kernel", (None, "tensor")),                 # MLP in [D, 4D]
    (_BLOCK + r"/Dense_0/bias", ("tensor",)),
    (_BLOCK + r"/Dense_1/kernel", ("tensor", None)),                 # MLP out [4D, D]
)
# Named rule sets that `config.sharding.rules` may list by name.
PRESETS = {"fsdp": ((".*", "fsdp"),), "transformer_tp": TRANSFORMER_TP}


def expand_rules(rules) -> tuple:
  """`config.sharding.rules` with preset names replaced by their (regex, spec) rules."""
  out = []
  for rule in rules:
    if isinstance(rule, str):
      if rule not in PRESETS:
        raise ValueError(f"config.sharding.rules names {rule!r}; the presets are "
                         f"{sorted(PRESETS)}, or give (regex, spec) pairs.")
      out.extend(PRESETS[rule])
    else:
      pattern, spec = rule
      out.append((pattern, spec if isinstance(spec, str) else tuple(spec)))
  return tuple(out)


def _names(axes) -> tuple:
  """A spec entry ("fsdp", ("data", "fsdp") or None) as a tuple of axis names."""
  return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def check_rules(rules, mesh):
  """Raises before any compile on rules that name axes the mesh does not have."""
  for pattern, spec in expand_rules(rules):
    axes = [spec] if isinstance(spec, str) else [x for a in spec for x in _names(a)]
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
      raise ValueError(f"config.sharding.rules: ({pattern!r}, {spec!r}) names mesh axis "
                       f"{missing[0]!r}, but config.mesh has {tuple(mesh.axis_names)}; add "
                       f"({missing[0]!r}, N) to config.mesh or drop the rule.")


def _heads_hint(name, dim, size) -> str:
  """Where dimension `dim` (of one block) of `name` counts attention heads, the key that
  sets them: the usual cause of a tensor-parallel split that does not divide."""
  if "MultiHeadDotProductAttention" not in name or name.endswith("/out/bias"):
    return ""
  # q/k/v kernels are [width, heads, head_dim], their biases [heads, head_dim]; the output
  # kernel is [heads, head_dim, width].
  heads = 1 if name.endswith("kernel") and "/out/" not in name else 0
  if dim != heads:
    return ""
  tower = next((f"model.{t}" for t in ("image", "text") if f"/{t}/" in f"/{name}"), "model")
  return f" (it counts attention heads: config.{tower}.heads must be a multiple of {size})"


def _leaf_spec(name, shape, mesh, rules, min_size):
  """PartitionSpec of one leaf: every matching rule, in order, shards what is still free.

  A tuple spec names an axis per dimension (it must divide that dimension); a
  string spec, e.g. "fsdp", shards the largest free dimension that divides by
  that axis (FSDP), or nothing if none does. Axes of size 1 are left out. The
  leading depth axis of scanned blocks ("blocks/block/...") is never split: a tuple
  spec names the dimensions of one block.
  """
  # A scanned stack's leaves (models.is_scanned) count as one block's.
  layers = int(models.is_scanned(name))
  spec = [None] * len(shape)
  if math.prod(shape[layers:]) < min_size:
    return P()
  used = set()
  for pattern, rule in rules:
    if not re.fullmatch(pattern, name):
      continue
    if isinstance(rule, str):
      if mesh.shape[rule] == 1 or rule in used:
        continue
      free = [i for i in range(layers, len(shape))
              if spec[i] is None and shape[i] % mesh.shape[rule] == 0]
      if free:
        spec[max(free, key=lambda i: (shape[i], -i))] = rule
        used.add(rule)
      continue
    if len(rule) > len(shape) - layers:
      raise ValueError(f"config.sharding.rules: ({pattern!r}, {rule}) has {len(rule)} "
                       f"entries but {name} has shape {shape}.")
    for i, axes in enumerate(rule, start=layers):
      axes = tuple(a for a in _names(axes) if mesh.shape[a] > 1 and a not in used)
      if not axes or spec[i] is not None:
        continue
      size = math.prod(mesh.shape[a] for a in axes)
      if shape[i] % size:
        raise ValueError(f"config.sharding.rules: ({pattern!r}, {rule}) splits dimension "
                         f"{i} of {name} {shape} over {axes} ({size} devices), which does "
                         f"not divide it; change the mesh or the model size"
                         f"{_heads_hint(name, i - layers, size)}.")
      spec[i] = axes[0] if len(axes) == 1 else axes
      used.update(axes)
  while spec and spec[-1] is None:  # P("fsdp", None) and P("fsdp") are one sharding.
    spec.pop()
  return P(*spec)


def param_shardings(tree, mesh, rules=(), min_size: int = 2**14):
  """NamedShardings for a pytree from regex rules on its '/'-joined paths.

  `rules`: (regex, spec) pairs or preset names (PRESETS); a regex must match the
  whole path (re.fullmatch), e.g. "params/image/block0/Dense_0/kernel" or the
  same path under "opt_state/..." (optimizer moments shard like their
  parameter). Leaves with fewer than `min_size` elements stay replicated.
  """
  check_rules(rules, mesh)
  rules = expand_rules(rules)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, _leaf_spec(
          path_name(path), tuple(getattr(leaf, "shape", ())), mesh, rules, min_size)), tree)


def bytes_per_device(tree, shardings) -> int:
  """Bytes one device holds of `tree` (abstract or concrete arrays) under `shardings`."""
  total = 0
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shard = s.shard_shape(x.shape) if x.shape else ()
    total += math.prod(shard) * np.dtype(x.dtype).itemsize
  return total


def global_batch(local_batch: dict, mesh) -> dict:
  """Host-local numpy arrays -> global jax arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
