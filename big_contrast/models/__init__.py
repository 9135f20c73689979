"""Flax Linen modules: backbones, heads, the text tower and the two-tower model."""
from big_contrast.models import remat
from big_contrast.models.heads import MLPHead
from big_contrast.models.resnet import ResNet
from big_contrast.models.text import TextTransformer
from big_contrast.models.two_tower import TwoTower
from big_contrast.models.vit import MAPHead
from big_contrast.models.vit import ViT
from big_contrast.models.vit import vit

import jax.numpy as jnp

DTYPES = ("float32", "bfloat16", "float16")


def dtypes(cfg) -> dict:
  """{"dtype": compute dtype, "param_dtype": storage dtype} of `config.model`, checked."""
  out = {}
  for key in ("dtype", "param_dtype"):
    name = cfg.get(key, "float32")
    if name not in DTYPES:
      raise ValueError(f"config.model.{key}={name!r} is unknown; choose from {DTYPES}.")
    out[key] = jnp.dtype(name)
  return out


def _tower_kw(cfg) -> dict:
  """dtype, param_dtype and remat of a tower from `config.model`, checked before any trace."""
  return dict(dtypes(cfg), remat=remat.check(cfg.get("remat", "none")))


def backbone(cfg, top=None):
  """Image backbone module from `config.model` (or `config.model.image` in a two-tower).

  `top`: the `config.model` whose dtype, param_dtype and remat apply (a two-tower's,
  for its image tower); default `cfg`.
  """
  kw = _tower_kw(top or cfg)
  if cfg.name == "resnet":
    return ResNet(depth=cfg.depth, width=cfg.get("width", 64), stem=cfg.get("stem", "imagenet"),
                  **kw)
  if cfg.name == "vit":
    overrides = {k: cfg[k] for k in ("width", "depth", "heads", "pool", "posemb") if k in cfg}
    return vit(cfg.variant, **kw, **overrides)
  raise ValueError(f"config.model.name={cfg.name!r} is unknown; choose 'resnet' or 'vit'.")


def two_tower(cfg, vocab_size: int, pad_id: int, context_length: int, bias: bool) -> TwoTower:
  """TwoTower from `config.model` (image: a backbone config; text: TextTransformer fields).

  `bias`: whether the model has the learned logit bias (SigLIP), initialised to
  `cfg.bias_init`. The top-level dtype, param_dtype and remat apply to both towers.
  """
  t = cfg.text
  text = TextTransformer(vocab_size=vocab_size, width=t.width, depth=t.depth, heads=t.heads,
                         context_length=context_length, causal=t.get("causal", True),
                         pool=t.get("pool", "last"), pad_id=pad_id, **_tower_kw(cfg))
  return TwoTower(backbone(cfg.image, cfg), text, embed_dim=cfg.embed_dim,
                  temperature_init=cfg.temperature_init, bias_init=cfg.bias_init if bias else None,
                  **dtypes(cfg))
