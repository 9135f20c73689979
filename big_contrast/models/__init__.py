"""Flax Linen modules: backbones, heads, the text tower and the two-tower model."""
from big_contrast.models.heads import MLPHead
from big_contrast.models.resnet import ResNet
from big_contrast.models.text import TextTransformer
from big_contrast.models.two_tower import TwoTower
from big_contrast.models.vit import MAPHead
from big_contrast.models.vit import ViT
from big_contrast.models.vit import vit

import jax.numpy as jnp


def backbone(cfg, dtype=None):
  """Image backbone module from `config.model` (or `config.model.image` in a two-tower)."""
  dtype = jnp.dtype(dtype or cfg.get("dtype", "float32"))
  if cfg.name == "resnet":
    return ResNet(depth=cfg.depth, width=cfg.get("width", 64), stem=cfg.get("stem", "imagenet"),
                  dtype=dtype)
  if cfg.name == "vit":
    overrides = {k: cfg[k] for k in ("width", "depth", "heads", "pool", "posemb") if k in cfg}
    return vit(cfg.variant, dtype=dtype, **overrides)
  raise ValueError(f"config.model.name={cfg.name!r} is unknown; choose 'resnet' or 'vit'.")


def two_tower(cfg, vocab_size: int, pad_id: int, context_length: int, bias: bool) -> TwoTower:
  """TwoTower from `config.model` (image: a backbone config; text: TextTransformer fields).

  `bias`: whether the model has the learned logit bias (SigLIP), initialised to
  `cfg.bias_init`.
  """
  dtype = jnp.dtype(cfg.get("dtype", "float32"))
  t = cfg.text
  text = TextTransformer(vocab_size=vocab_size, width=t.width, depth=t.depth, heads=t.heads,
                         context_length=context_length, causal=t.get("causal", True),
                         pool=t.get("pool", "last"), pad_id=pad_id, dtype=dtype)
  return TwoTower(backbone(cfg.image, dtype), text, embed_dim=cfg.embed_dim,
                  temperature_init=cfg.temperature_init, bias_init=cfg.bias_init if bias else None,
                  dtype=dtype)
