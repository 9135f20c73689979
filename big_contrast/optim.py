"""Optax optimizer by name, warmup + cosine schedule, weight-decay mask, frozen parameters."""
import re

import jax
import optax

from big_contrast import models
from big_contrast import settings
from big_contrast import sharding

OPTIMIZERS = ("adamw", "lion", "lars", "sgd")

# `config.optimizer`. lr is per 256 examples when lr_batch_scale is set; b1, b2, eps
# (adamw, lion), trust_coefficient (lars) and nesterov (sgd) are optional.
SETTINGS = dict(
    name=settings.choice("lars", OPTIMIZERS),
    lr=settings.positive(0.3),
    lr_batch_scale=settings.number(256, low=0),
    weight_decay=settings.number(1e-6, low=0),
    momentum=settings.number(0.9, low=0, high=1),
    warmup_epochs=settings.number(10.0, low=0),
    min_lr_ratio=settings.number(0.0, low=0, high=1),
    grad_clip_norm=settings.number(0.0, low=0),
    frozen=settings.regexes(),  # Regexes of parameter paths that get no updates.
    b1=settings.optional(settings.number(None, low=0, high=1)),
    b2=settings.optional(settings.number(None, low=0, high=1)),
    eps=settings.optional(settings.positive(None)),
    trust_coefficient=settings.optional(settings.positive(None)),
    nesterov=settings.optional(settings.boolean(None)),
)


def decay_mask(params):
  """Decay weight matrices and kernels only: no decay on biases or norm scales/offsets. The
  rank is one block's: scanned blocks (model.scan_layers) carry a leading depth axis."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim - models.is_scanned(sharding.path_name(path)) > 1, params)


def is_frozen(path, patterns) -> bool:
  """Whether a parameter's '/'-joined path fully matches one of the `frozen` regexes."""
  return any(re.fullmatch(p, sharding.path_name(path)) for p in patterns)


def check_frozen(patterns, params):
  """Fails naming each `frozen` regex that matches no parameter: a typo would otherwise
  train the tower it meant to lock."""
  paths = [sharding.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for pattern in patterns:
    if not any(re.fullmatch(pattern, path) for path in paths):
      raise ValueError(f"config.optimizer.frozen holds {pattern!r}, which matches no parameter "
                       f"path in full; they look like {paths[:3]}.")


def param_labels(params, frozen, starts=()):
  """The optax.multi_transform group of every parameter (see `make`): "frozen" where a
  `frozen` regex matches, else "late_<i>" where the i-th of `starts` does, else "trained"."""
  def label(path, _):
    if is_frozen(path, frozen):
      return "frozen"
    for i, (pattern, start) in enumerate(starts):
      if start > 0 and re.fullmatch(pattern, sharding.path_name(path)):
        return f"late_{i}"
    return "trained"
  return jax.tree_util.tree_map_with_path(label, params)


def stop_frozen(params, patterns):
  """`params` with the frozen ones (see `frozen_labels`) behind stop_gradient."""
  if not patterns:
    return params
  return jax.tree_util.tree_map_with_path(
      lambda path, p: jax.lax.stop_gradient(p) if is_frozen(path, patterns) else p, params)


def peak_lr(cfg, batch_size: int) -> float:
  """`lr` is per 256 examples when `lr_batch_scale` is set (the linear scaling rule)."""
  return cfg.lr * (batch_size / cfg.lr_batch_scale if cfg.get("lr_batch_scale") else 1.0)


def schedule(cfg, batch_size: int, total_steps: int, warmup_steps: int):
  """Linear warmup from 0 to the peak, then cosine decay to `min_lr_ratio` × peak."""
  peak = peak_lr(cfg, batch_size)
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1),
      end_value=peak * cfg.get("min_lr_ratio", 0.0))


def make(cfg, batch_size: int, total_steps: int, warmup_steps: int, starts=()):
  """Returns (optax transformation, learning-rate schedule).

  `starts`: ((regex, step), ...) parameters (paths matched in full) that train from `step`
  on only, as SwAV's prototypes. Until then they get zero updates and their optimizer state
  does not move: from `step` on they train as a parameter would whose optimizer starts
  there (PyTorch's skip of a parameter without a gradient), on the run's lr schedule. A
  state that moved would, for AdamW, give updates up to 3x too large after a long wait (bias
  correction for moments that are still zero)."""
  lr = schedule(cfg, batch_size, total_steps, warmup_steps)
  clip = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.get("grad_clip_norm") else []
  late = {f"late_{i}": optax.conditionally_mask(
      # Its own count starts at `start`: the lr is the run's at that step.
      _optimizer(cfg, lambda count, s=start: lr(count + s)), lambda step, s=start: step >= s)
          for i, (_, start) in enumerate(starts) if start > 0}
  # Without late groups, clipping sits inside the trained group (the train state's layout of
  # earlier versions: their checkpoints restore); frozen gradients are zero, so its norm is
  # the global one. With them, it spans every group.
  groups = {"trained": optax.chain(*clip, _optimizer(cfg, lr)) if clip and not late else
                       _optimizer(cfg, lr), **late}
  if cfg.get("frozen"):  # Frozen parameters get zero updates and carry no optimizer state.
    groups["frozen"] = optax.set_to_zero()
  if len(groups) == 1:
    return groups["trained"], lr
  tx = optax.multi_transform(
      groups, lambda params: param_labels(params, cfg.get("frozen", ()), starts))
  return (optax.chain(*clip, tx) if late else tx), lr


def _optimizer(cfg, lr):
  wd = cfg.get("weight_decay", 0.0)
  if cfg.name == "adamw":
    return optax.adamw(lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                       eps=cfg.get("eps", 1e-8), weight_decay=wd, mask=decay_mask)
  if cfg.name == "lion":
    return optax.lion(lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.99), weight_decay=wd,
                      mask=decay_mask)
  if cfg.name == "lars":
    # As in SimCLR: biases and BN parameters get neither decay nor trust-ratio scaling.
    return optax.lars(lr, weight_decay=wd, weight_decay_mask=decay_mask,
                      trust_coefficient=cfg.get("trust_coefficient", 0.001),
                      trust_ratio_mask=decay_mask, momentum=cfg.get("momentum", 0.9))
  return optax.chain(optax.add_decayed_weights(wd, decay_mask),
                     optax.sgd(lr, momentum=cfg.get("momentum", 0.9) or None,
                               nesterov=cfg.get("nesterov", False)))
