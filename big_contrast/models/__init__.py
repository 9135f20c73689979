"""Flax Linen modules: backbones, heads, the text tower and the two-tower model."""
from big_contrast.models import remat
from big_contrast.models.heads import MLPHead
from big_contrast.models.resnet import ResNet
from big_contrast.models.text import TextTransformer
from big_contrast.models.two_tower import TwoTower
from big_contrast.models.vit import MAPHead
from big_contrast.models.vit import ViT
from big_contrast.models.vit import is_scanned
from big_contrast.models.vit import stack_layers
from big_contrast.models.vit import unstack_layers
from big_contrast.models.vit import vit

import jax.numpy as jnp

from big_contrast import settings
from big_contrast.models.resnet import STEMS
from big_contrast.models.vit import POOLS
from big_contrast.models.vit import VARIANTS

DTYPES = ("float32", "bfloat16", "float16")

# What every model section takes: compute dtype, storage dtype, rematerialisation policy,
# whether transformer blocks run as one scan (ViT and text towers; compile time flat in
# depth, parameters stacked) and over how many slices of the batch each transformer block
# runs in training (remat's working set is a slice's): models/vit.py `blocks`.
TOWER_SETTINGS = dict(
    dtype=settings.choice("float32", DTYPES), param_dtype=settings.choice("float32", DTYPES),
    remat=settings.choice("none", tuple(remat.POLICIES)), scan_layers=settings.boolean(False),
    block_chunks=settings.integer(1, low=1))


def _variant(v):
  name, _, patch = str(v).partition("/")
  if name in VARIANTS and patch.isdigit() and int(patch) > 0:
    return None
  return f"must be a ViT variant like 'B/16' with a size in {tuple(VARIANTS)}"


# An image backbone (`config.model`, or `config.model.image` of a two-tower): a ResNet
# (depth, width, stem) or a ViT (variant, whose width, depth and heads the keys override).
BACKBONE_SETTINGS = dict(
    name=settings.choice("resnet", ("resnet", "vit")),
    # depth: a ResNet's (DEPTHS); a ViT's optional override of its variant's.
    depth=settings.integer(50, low=1), width=settings.integer(64, low=1),
    stem=settings.choice("imagenet", STEMS),
    variant=settings.optional(_variant),
    heads=settings.optional(settings.integer(None, low=1)),
    pool=settings.optional(settings.choice(None, POOLS)),
    posemb=settings.optional(settings.choice(None, ("sincos2d", "learn"))))

# The text tower of a two-tower (models.TextTransformer).
TEXT_SETTINGS = dict(
    width=settings.integer(512, low=1), depth=settings.integer(12, low=1),
    heads=settings.integer(8, low=1), causal=settings.boolean(True),
    pool=settings.choice("last", ("last", "first", "gap", "map")))


def encoder_settings(predictor: bool = False) -> dict:
  """`config.model` of an image method: backbone, projection head (head_*) and, for methods
  with a predictor, its hidden dims and last BatchNorm (predictor_*)."""
  spec = dict(BACKBONE_SETTINGS, **TOWER_SETTINGS,
              head_hidden_dims=settings.widths((2048,)), head_dim=settings.integer(128, low=1),
              head_bn=settings.boolean(True), head_last_bn=settings.boolean(False))
  if predictor:
    spec.update(predictor_hidden_dims=settings.widths((4096,)),
                predictor_last_bn=settings.boolean(False))
  return spec


def two_tower_settings() -> dict:
  """`config.model` of an image-text method: name "two_tower", image (a backbone), text, the
  joint embedding width and the initial logit scale t and bias b (SigLIP's)."""
  return dict(name=settings.choice("two_tower", ("two_tower",)), **TOWER_SETTINGS,
              embed_dim=settings.integer(512, low=1),
              image=dict(BACKBONE_SETTINGS, name=settings.choice("vit", ("resnet", "vit")),
                         variant=settings.Setting("B/16", _variant)),
              text=TEXT_SETTINGS,
              temperature_init=settings.positive(1 / 0.07), bias_init=settings.number(-10.0))


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
  """dtype, param_dtype, remat, scan_layers and block_chunks of a tower from `config.model`,
  checked before any trace."""
  return dict(dtypes(cfg), remat=remat.check(cfg.get("remat", "none")),
              scan_layers=bool(cfg.get("scan_layers", False)),
              block_chunks=int(cfg.get("block_chunks", 1)))


def _transformer_kw(kw: dict) -> dict:
  """`_tower_kw` of a transformer tower, whose block_chunks needs remat."""
  if kw["block_chunks"] > 1 and kw["remat"] == "none":
    raise ValueError(f"config.model.block_chunks={kw['block_chunks']} needs "
                     "config.model.remat='full' (or 'dots'): without remat every slice's "
                     "activations are kept for the backward pass anyway, and the slices only "
                     "add copies.")
  return kw


def backbone(cfg, top=None):
  """Image backbone module from `config.model` (or `config.model.image` in a two-tower).

  `top`: the `config.model` whose dtype, param_dtype and remat apply (a two-tower's,
  for its image tower); default `cfg`.
  """
  kw = _tower_kw(top or cfg)
  if cfg.name == "resnet":
    # A two-tower's block_chunks is its text tower's; a ResNet alone has no use for it.
    if kw.pop("block_chunks") > 1 and top is None:
      raise ValueError("config.model.block_chunks applies to transformer blocks (ViT, text "
                       "tower); a ResNet's BatchNorm needs the whole batch: set it to 1.")
    if kw.pop("scan_layers"):
      raise ValueError("config.model.scan_layers=True applies to transformer blocks (ViT, text "
                       "tower); a ResNet's stages differ in shape: set it to False.")
    return ResNet(depth=cfg.depth, width=cfg.get("width", 64), stem=cfg.get("stem", "imagenet"),
                  **kw)
  if cfg.name == "vit":
    overrides = {k: cfg[k] for k in ("width", "depth", "heads", "pool", "posemb") if k in cfg}
    return vit(cfg.variant, **_transformer_kw(kw), **overrides)
  raise ValueError(f"config.model.name={cfg.name!r} is unknown; choose 'resnet' or 'vit'.")


def two_tower(cfg, vocab_size: int, pad_id: int, context_length: int, bias: bool) -> TwoTower:
  """TwoTower from `config.model` (image: a backbone config; text: TextTransformer fields).

  `bias`: whether the model has the learned logit bias (SigLIP), initialised to
  `cfg.bias_init`. The top-level dtype, param_dtype and remat apply to both towers.
  """
  t = cfg.text
  text = TextTransformer(vocab_size=vocab_size, width=t.width, depth=t.depth, heads=t.heads,
                         context_length=context_length, causal=t.get("causal", True),
                         pool=t.get("pool", "last"), pad_id=pad_id,
                         **_transformer_kw(_tower_kw(cfg)))
  return TwoTower(backbone(cfg.image, cfg), text, embed_dim=cfg.embed_dim,
                  temperature_init=cfg.temperature_init, bias_init=cfg.bias_init if bias else None,
                  **dtypes(cfg))
