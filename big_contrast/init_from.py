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

PyTorch weights (LiT from a well-known tower): `config.init_from.torch.path` names a
.safetensors or .pt state dict of `torch.library` ("torchvision" ResNet, "timm" ViT or
"open_clip" CLIP) whose architecture is `torch.model`, a dotted config key such as
"model.image" (big_contrast/torch_convert.py converts it). Its source paths are those of
that module alone: "params/stem_conv/kernel", "state/model/batch_stats/stem_norm/mean"; the
torchvision / timm classifier (fc.*, head.*) is dropped.
"""
import os
import re

import jax
from jax.experimental import multihost_utils
import ml_dtypes
import numpy as np

from big_contrast import checkpoint
from big_contrast import models
from big_contrast import settings
from big_contrast import sharding

# `config.init_from`: a source workdir (and step), or PyTorch weights; see the docstring.
SETTINGS = dict(
    workdir="", step=settings.integer(0, low=0), rules=settings.regexes(pairs=True),
    torch=dict(path="", library=settings.choice("", ("", "torchvision", "timm", "open_clip")),
               model="model"))


def requested(cfg) -> bool:
  """Whether `config.init_from` names a source."""
  return bool(cfg and (cfg.get("workdir") or cfg.get("torch", {}).get("path")))


def _flat(tree, prefix):
  return {f"{prefix}/{sharding.path_name(p)}": leaf
          for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _flat_state(train_state) -> dict:
  """{"params/...": leaf, "state/...": leaf}: the paths the rules match."""
  return {**_flat(train_state["params"], "params"), **_flat(train_state["state"], "state")}


def read_state_dict(path: str) -> dict:
  """{name: numpy array} of a .safetensors or torch .pt state dict, bfloat16 kept bfloat16."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return load_file(path)
  import torch
  # weights_only: tensors only, never the pickled code a downloaded file may carry (the
  # default only from torch 2.6). numpy has no bfloat16: its bits come through as int16.
  as_numpy = lambda v: (v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
                        if v.dtype == torch.bfloat16 else v.numpy())
  return {k: as_numpy(v) for k, v in
          torch.load(path, map_location="cpu", weights_only=True).items()}


def _read_torch(cfg, config) -> dict:
  """{path: numpy array} of a PyTorch state dict, converted to the Flax module's names."""
  from big_contrast import torch_convert as tc
  t = cfg.torch
  state_dict = read_state_dict(t.path)
  model_cfg = config
  for key in t.model.split("."):
    model_cfg = model_cfg[key]
  size = config.augment.crop_size
  needs = {"torchvision": "resnet", "timm": "vit", "open_clip": "two_tower"}
  if t.library in needs and model_cfg.get("name") != needs[t.library]:
    raise ValueError(f"config.init_from.torch.library={t.library!r} needs config.{t.model}.name="
                     f"{needs[t.library]!r}, not {model_cfg.get('name')!r}.")
  classifiers = {"torchvision": "fc.", "timm": "head."}
  if t.library in classifiers:
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(classifiers[t.library])}
    entries, _ = tc.backbone_torch(model_cfg, size)
  elif t.library == "open_clip":
    entries = tc.two_tower_entries(model_cfg.image, model_cfg.text, size,
                                   "logit_bias" in state_dict)
  else:
    raise ValueError(f"config.init_from.torch.library={t.library!r}: choose torchvision, timm "
                     "or open_clip.")
  flat = tc.import_(state_dict, entries)
  return {(tc.MODEL_STATE + p if p.startswith("batch_stats/") else p): x
          for p, x in flat.items()}


def _torch_source(cfg) -> bool:
  return bool(cfg.get("torch") and cfg.torch.path)


def check_source(cfg):
  """Fails if the source `cfg` names is not there (before the rules are matched: a missing
  source is the first thing to fix)."""
  if _torch_source(cfg):
    if not os.path.exists(cfg.torch.path):
      raise ValueError(f"config.init_from.torch.path={cfg.torch.path!r} does not exist; point "
                       "it at a .safetensors or .pt state dict.")
    return
  if not os.path.isdir(cfg.workdir):
    raise ValueError(f"config.init_from.workdir={cfg.workdir!r} does not exist; set it to the "
                     "workdir of a run of this project (the one holding its checkpoints/).")
  directory = os.path.join(os.path.abspath(cfg.workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise ValueError(f"config.init_from.workdir={cfg.workdir!r} has no checkpoints/ "
                     f"directory ({directory}); train the source run first.")


def read_checkpoint(workdir: str, step: int) -> dict:
  """{path: numpy array} of the params and state of checkpoint `step` of `workdir`, checked
  against its digest (checkpoint.CorruptCheckpoint if it differs), transformer blocks
  unrolled ("block{i}/...") whether or not the source scanned them."""
  reader = checkpoint.Checkpointer.reader(workdir)
  try:
    # Restored on the host as numpy arrays: the source may have had another mesh.
    restored = reader.restore_host(step)
  finally:
    reader.close()
  return models.unstack_layers(_flat_state(restored))


def read_source(cfg, config=None) -> dict:
  """{path: numpy array} of the source checkpoint's params and state (or PyTorch weights),
  transformer blocks unrolled ("block{i}/...") whether or not the source scanned them."""
  check_source(cfg)
  if _torch_source(cfg):
    return _read_torch(cfg, config)
  reader = checkpoint.Checkpointer.reader(cfg.workdir)
  steps = reader.all_steps()
  reader.close()
  if not steps:
    raise ValueError(f"config.init_from.workdir={cfg.workdir!r} has no checkpoints yet; train "
                     "the source run first.")
  step = cfg.get("step") or steps[-1]
  if jax.process_count() > 1:  # A save in progress may show to some processes only.
    step = int(multihost_utils.broadcast_one_to_all(np.int32(step)))
  if step not in steps:
    raise ValueError(f"config.init_from.step={step} is not a checkpoint of "
                     f"{reader.directory}; available steps: {steps} (0: the latest).")
  try:
    return read_checkpoint(cfg.workdir, step)
  except checkpoint.CorruptCheckpoint as e:
    fix = checkpoint.earlier_step(steps, step, "config.init_from.step")
    raise checkpoint.CorruptCheckpoint(f"{e} Nothing was loaded; {fix}.") from None


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


def load(cfg, abstract_state, config=None) -> dict:
  """{destination path: numpy array} to load, checked against the source's names and shapes.

  `config`: the run's config, which describes the architecture of PyTorch weights.
  """
  check_source(cfg)
  dst = _flat_state(abstract_state)
  mapping = _match(cfg, dst)
  source = read_source(cfg, config)
  if any(models.is_scanned(p) for p in dst):  # This model scans its blocks: stack the source's.
    source = models.stack_layers(source)
  values = {}
  for path, src in mapping.items():
    if src not in source:
      near = sorted(source)[:8]
      raise ValueError(f"config.init_from: {path} maps to {src!r}, which the source "
                       f"{cfg.workdir or cfg.torch.path} does not have; it has e.g. {near}.")
    if source[src].shape != dst[path].shape:
      raise ValueError(f"config.init_from: {path} has shape {dst[path].shape} but its source "
                       f"{src} has {source[src].shape}; the architectures differ.")
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
