"""Flax Linen modules: backbones and heads."""
from big_contrast.models.heads import MLPHead
from big_contrast.models.resnet import ResNet
from big_contrast.models.vit import ViT
from big_contrast.models.vit import vit

import jax.numpy as jnp


def backbone(cfg):
  """Backbone module from `config.model`."""
  dtype = jnp.dtype(cfg.get("dtype", "float32"))
  if cfg.name == "resnet":
    return ResNet(depth=cfg.depth, width=cfg.get("width", 64), stem=cfg.get("stem", "imagenet"),
                  dtype=dtype)
  if cfg.name == "vit":
    overrides = {k: cfg[k] for k in ("width", "depth", "heads", "pool", "posemb") if k in cfg}
    return vit(cfg.variant, dtype=dtype, **overrides)
  raise ValueError(f"config.model.name={cfg.name!r} is unknown; choose 'resnet' or 'vit'.")
