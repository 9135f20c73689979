"""Vision Transformer (Dosovitskiy et al. 2021) as a Flax Linen module."""
import re
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

  def step(self, carry, xs):
    """The body of a scan over batch chunks: (carry, (x, mask)) -> (carry, block(x, mask))."""
    return carry, self(*xs)


class _ScanStep(nn.Module):
  """One block as a step of nn.scan: (x, mask) -> (x, None)."""
  heads: int
  mlp_dim: int
  dtype: Any
  param_dtype: Any
  remat: str
  chunks: int

  @nn.compact
  def __call__(self, x, mask):
    return _block(x, mask, self.chunks, self.heads, self.mlp_dim, self.dtype, self.param_dtype,
                  self.remat, "block"), None


def _block(x, mask, chunks: int, heads: int, mlp_dim: int, dtype, param_dtype, remat: str,
           name: str):
  """One block named `name` on x [N, L, C], over the batch in `chunks` sequential slices.

  Slice j holds examples j, j + chunks, j + 2 chunks, ...: the batch is sharded in contiguous
  rows, so every device keeps an equal share of each slice. The slices share the block's
  parameters; under remat the backward pass recomputes and differentiates one slice at a
  time, so its working set (attention logits and weights [heads, L, L], the MLP's hidden
  layer) is a slice's, not the whole batch's, while the saved block inputs stay the same.
  """
  block = remat_lib.wrap(Block, remat)
  if chunks == 1:
    return block(heads, mlp_dim, dtype, param_dtype, name=name)(x, mask)
  n = x.shape[0]
  if n % chunks:
    raise ValueError(f"config.model.block_chunks={chunks} does not divide a batch of {n} "
                     "examples; use a divisor of the per-device batch.")
  split = lambda a: None if a is None else a.reshape(n // chunks, chunks, *a.shape[1:])
  scanned = nn.scan(block, variable_broadcast="params", split_rngs={"params": False},
                    in_axes=1, out_axes=1, length=chunks, methods=["step"])
  _, y = scanned(heads, mlp_dim, dtype, param_dtype, name=name).step(None, (split(x), split(mask)))
  return y.reshape(x.shape)


def blocks(x, mask, *, depth: int, heads: int, mlp_dim: int, dtype, param_dtype, remat: str,
           scan: bool, chunks: int = 1):
  """`depth` blocks, called inside a parent's compact __call__. Unrolled, block i's parameters
  are at "block{i}/..."; with `scan`, one block is traced and compiled once and run `depth`
  times (compile time stays flat in depth), its parameters stacked at "blocks/block/..." with
  a leading depth axis (`stack_layers` / `unstack_layers` convert between the two).
  `chunks` > 1 runs each block over the batch in that many slices (`_block`); the parameter
  paths do not change."""
  if not scan:
    for i in range(depth):
      x = _block(x, mask, chunks, heads, mlp_dim, dtype, param_dtype, remat, f"block{i}")
    return x
  scanned = nn.scan(_ScanStep, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=nn.broadcast, length=depth)
  x, _ = scanned(heads, mlp_dim, dtype, param_dtype, remat, chunks, name=SCANNED_BLOCKS)(x, mask)
  return x


def training_chunks(tower: nn.Module, train: bool) -> int:
  """The tower's block_chunks in a training step; 1 at init (a one-example batch) and in
  inference, where there is no backward pass to bound."""
  return tower.block_chunks if train and not tower.is_initializing() else 1


SCANNED_BLOCKS = "blocks"  # The scanned stack's name; its one block is "blocks/block".
_UNROLLED = re.compile(r"block(\d+)")


def _scanned_at(parts: list) -> int | None:
  """Where a path's segments hold the scanned stack "blocks", "block" (None: nowhere)."""
  return next((i for i in range(len(parts) - 1)
               if parts[i] == SCANNED_BLOCKS and parts[i + 1] == "block"), None)


def is_scanned(path: str) -> bool:
  return _scanned_at(path.split("/")) is not None


def unstack_layers(flat: dict) -> dict:
  """{"a/b/...": array} with every scanned stack ".../blocks/block/..." [depth, ...] unrolled
  into ".../block{i}/..." (the layout of scan_layers=False, which export and init_from read)."""
  out = {}
  for path, x in flat.items():
    parts = path.split("/")
    at = _scanned_at(parts)
    if at is None:
      out[path] = x
      continue
    x = np.asarray(x)
    for i in range(x.shape[0]):
      out["/".join(parts[:at] + [f"block{i}"] + parts[at + 2:])] = x[i]
  return out


def stack_layers(flat: dict) -> dict:
  """The inverse of unstack_layers: ".../block{i}/..." leaves stacked into
  ".../blocks/block/..." in the order of i."""
  out, stacks = {}, {}
  for path, x in flat.items():
    parts = path.split("/")
    at = next((j for j, p in enumerate(parts[:-1]) if _UNROLLED.fullmatch(p)), None)
    if at is None:
      out[path] = x
      continue
    key = "/".join(parts[:at] + [SCANNED_BLOCKS, "block"] + parts[at + 1:])
    stacks.setdefault(key, {})[int(_UNROLLED.fullmatch(parts[at]).group(1))] = x
  for key, layers in stacks.items():
    if sorted(layers) != list(range(len(layers))):
      raise ValueError(f"{key}: blocks {sorted(layers)} are not 0..{len(layers) - 1}; the "
                       "source holds another depth or a partial model.")
    out[key] = np.stack([np.asarray(layers[i]) for i in range(len(layers))])
  return out


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
    scan_layers: run the blocks as one nn.scan (see `blocks`).
    block_chunks: in training, run each block over the batch in this many sequential
      slices (`_block`), bounding remat's working set by a slice.
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
  scan_layers: bool = False
  block_chunks: int = 1

  @nn.compact
  def __call__(self, x, train: bool = True):
    # No dropout or BatchNorm: `train` only chunks the blocks, for the backward pass.
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
    x = blocks(x, None, depth=self.depth, heads=self.heads, mlp_dim=4 * self.width,
               dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat,
               scan=self.scan_layers, chunks=training_chunks(self, train))
    # Rematerialised like the blocks: otherwise LayerNorm keeps float32 copies of every token
    # (centred, scaled), six times the bytes of its bf16 input.
    x = remat_lib.wrap(nn.LayerNorm, self.remat)(dtype=self.dtype, param_dtype=self.param_dtype,
                                                 name="norm")(x)
    if self.pool == "map":
      x = remat_lib.wrap(MAPHead, self.remat)(self.heads, 4 * self.width, self.dtype,
                                              self.param_dtype, name="map_head")(x)
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
