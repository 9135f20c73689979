"""Flax Linen modules: backbones and heads."""
from big_contrast.models.heads import MLPHead
from big_contrast.models.resnet import ResNet
from big_contrast.models.resnet import resnet

import jax.numpy as jnp


def backbone(cfg):
  """Backbone module from `config.model`."""
  dtype = jnp.dtype(cfg.get("dtype", "float32"))
  if cfg.name == "resnet":
    return ResNet(depth=cfg.depth, width=cfg.get("width", 64), stem=cfg.get("stem", "imagenet"),
                  dtype=dtype)
  raise ValueError(f"config.model.name={cfg.name!r} is unknown; available: 'resnet'.")
