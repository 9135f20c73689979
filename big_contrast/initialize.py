"""Initialise parts of a fresh train state from a checkpoint of this project (LiT, fine-tuning).

  config.init_from.workdir  the source run's workdir (its checkpoints/ are read)
  config.init_from.step     the source step (0: its latest)
  config.init_from.rules    ((dst_regex, src_template), ...) over full train-state paths
                            such as "params/image/conv_init/kernel" or
                            "state/model/batch_stats/image/bn_init/mean"

Every destination leaf whose path fully matches a rule's regex is loaded from the source
path `re.sub(dst_regex, src_template, path)` (the first matching rule wins); every other
leaf keeps its fresh initialisation. Only params and state (BatchNorm statistics, queues)
are loaded, never optimizer state or the step. Mismatches fail before any compile.
"""
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp

from big_contrast import sharding


def _flat(tree, prefix):
  return {f"{prefix}/{sharding.path_name(p)}": leaf
          for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _flat_state(train_state) -> dict:
  """{"params/...": leaf, "state/...": leaf}: the paths the rules match."""
  return {**_flat(train_state["params"], "params"), **_flat(train_state["state"], "state")}


def read_source(cfg) -> dict:
  """{path: numpy array} of the source checkpoint's params and state."""
  directory = os.path.join(os.path.abspath(cfg.workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise ValueError(f"config.init_from.workdir={cfg.workdir!r} has no checkpoints/ "
                     f"directory ({directory}); train the source run first.")
  with ocp.CheckpointManager(directory) as manager:
    step = cfg.get("step") or manager.latest_step()
    if step not in manager.all_steps():
      raise ValueError(f"config.init_from.step={cfg.get('step')} is not in {directory}; "
                       f"available steps: {sorted(manager.all_steps())}.")
    # Restored on the host as numpy arrays: the source may have had another mesh.
    metadata = manager.item_metadata(step)
    target = jax.tree.map(
        lambda m: ocp.RestoreArgs(restore_type=np.ndarray) if hasattr(m, "shape") else None,
        metadata)
    restored = manager.restore(step, args=ocp.args.PyTreeRestore(restore_args=target))
  return _flat_state(restored)


def plan(cfg, abstract_state) -> dict:
  """{destination path: source path} for the leaves of `abstract_state` the rules select."""
  return _match(cfg, _flat_state(abstract_state))


def _match(cfg, paths) -> dict:
  rules = [(re.compile(d), s) for d, s in cfg.rules]
  mapping = {}
  for path in paths:
    for regex, template in rules:
      if regex.fullmatch(path):
        mapping[path] = regex.sub(template, path)
        break
  if not mapping:
    raise ValueError(f"config.init_from.rules={tuple(cfg.rules)} match no parameter or state "
                     "path of this model; paths look like 'params/image/...'.")
  return mapping


def load(cfg, abstract_state) -> dict:
  """{destination path: numpy array} to load, checked against the source's names and shapes."""
  dst = _flat_state(abstract_state)
  mapping = _match(cfg, dst)
  source = read_source(cfg)
  values = {}
  for path, src in mapping.items():
    if src not in source:
      near = sorted(source)[:8]
      raise ValueError(f"config.init_from: {path} maps to {src}, which the checkpoint in "
                       f"{cfg.workdir} does not have; it has e.g. {near}.")
    if source[src].shape != dst[path].shape:
      raise ValueError(f"config.init_from: {path} has shape {dst[path].shape} but its source "
                       f"{src} has {source[src].shape}; the towers' configs differ.")
    values[path] = source[src].astype(dst[path].dtype)
  return values


def apply(train_state, values: dict, shardings):
  """`train_state` with the loaded leaves replaced (placed with their shardings)."""
  def replace(prefix):
    def leaf(path, x, s):
      name = f"{prefix}/{sharding.path_name(path)}"
      return jax.device_put(values[name], s) if name in values else x
    return leaf
  out = dict(train_state)
  for key in ("params", "state"):
    out[key] = jax.tree_util.tree_map_with_path(replace(key), train_state[key], shardings[key])
  return out
