"""Vision Transformer (Dosovitskiy et al. 2021) as a Flax Linen module."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from big_contrast.models import remat as remat_lib

# name -> (width, depth, heads); the MLP is 4x wide.
POOLS = ("cls", "gap", "map")
VARIANTS = {"Ti": (192, 12, 3), "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16)}


def posemb_sincos_2d(h, w, width, temperature=10_000.0):
  """Fixed 2D sine-cosine position embeddings (MoCo v3, big_vision) [1, h*w, width]."""
  if width % 4:
    raise ValueError(f"ViT width {width} must be a multiple of 4 for sincos2d embeddings.")
  y, x = np.mgrid[:h, :w]
  omega = 1.0 / temperature**(np.arange(width // 4) / (width // 4 - 1 or 1))
  y, x = np.einsum("m,d->md", y.ravel(), omega), np.einsum("m,d->md", x.ravel(), omega)
  return jnp.asarray(np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], 1)[None],
                     jnp.float32)


def _mlp(x, mlp_dim, dtype, param_dtype):
  dense = lambda d: nn.Dense(d, dtype=dtype, param_dtype=param_dtype,
                             kernel_init=nn.initializers.xavier_uniform())
  y = nn.gelu(dense(mlp_dim)(x))  # Built first: Dense_0 is the MLP's input layer.
  return dense(x.shape[-1])(y)


class Block(nn.Module):
  """Pre-LayerNorm transformer block; `mask` [B, 1, L, L] is True where attention is allowed."""
  heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    norm = lambda: nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype)
    y = norm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype,
                                            param_dtype=self.param_dtype,
                                            kernel_init=nn.initializers.xavier_uniform())(
                                                y, y, mask=mask)
    return x + _mlp(norm()(x), self.mlp_dim, self.dtype, self.param_dtype)


class MAPHead(nn.Module):
  """Multihead attention pooling (Lee et al. 2019; big_vision's "map" head): a learned query
  attends over the tokens, followed by a residual MLP. [B, L, C] -> [B, C]."""
  heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    n, _, c = x.shape
    probe = jnp.tile(self.param("probe", nn.initializers.xavier_uniform(), (1, 1, c),
                                self.param_dtype), (n, 1, 1))
    if mask is not None:  # [B, L] valid tokens -> [B, 1, 1, L]
      mask = mask[:, None, None, :]
    x = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype,
                                        param_dtype=self.param_dtype,
                                        kernel_init=nn.initializers.xavier_uniform())(
                                            probe.astype(x.dtype), x, mask=mask)
    x = x + _mlp(nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype)(x), self.mlp_dim,
                 self.dtype, self.param_dtype)
    return x[:, 0]


class ViT(nn.Module):
  """ViT backbone returning pooled features [B, width].

  Attributes:
    width, depth, heads: transformer size (see VARIANTS for the named ones).
    patch_size: side of the square patches.
    pool: "cls" (class token), "gap" (mean over patch tokens) or "map"
      (attention pooling, SigLIP's image head).
    posemb: "sincos2d" (fixed) or "learn".
    dtype, param_dtype: compute and parameter storage dtypes.
    remat: rematerialisation policy of every block (remat.POLICIES).
  """
  width: int = 384
  depth: int = 12
  heads: int = 6
  patch_size: int = 16
  pool: str = "cls"
  posemb: str = "sincos2d"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # No dropout or BatchNorm.
    if self.pool not in POOLS:
      raise ValueError(f"ViT pool {self.pool!r} unknown; use one of {POOLS} (config.model.pool).")
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="embedding")(x.astype(self.dtype))
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    if self.posemb == "sincos2d":
      x = x + posemb_sincos_2d(h, w, c).astype(x.dtype)
    else:
      x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w, c),
                         self.param_dtype).astype(x.dtype)
    if self.pool == "cls":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c), self.param_dtype)
      x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)).astype(x.dtype), x], axis=1)
    block = remat_lib.wrap(Block, self.remat)
    for i in range(self.depth):
      x = block(self.heads, 4 * self.width, self.dtype, self.param_dtype, name=f"block{i}")(x)
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
    if self.pool == "map":
      x = MAPHead(self.heads, 4 * self.width, self.dtype, self.param_dtype, name="map_head")(x)
    else:
      x = x[:, 0] if self.pool == "cls" else x.mean(1)
    return x.astype(jnp.float32)


def vit(variant: str, **kw) -> ViT:
  """ViT from a name like "S/16"; keyword arguments override the named size."""
  name, patch = variant.split("/")
  if name not in VARIANTS:
    raise ValueError(f"ViT variant {variant!r} unknown; choose from "
                     f"{[f'{k}/16' for k in VARIANTS]} (config.model.variant).")
  width, depth, heads = VARIANTS[name]
  return ViT(**{**dict(width=width, depth=depth, heads=heads, patch_size=int(patch)), **kw})
