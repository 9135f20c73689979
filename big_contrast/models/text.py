"""Text transformer for the text tower of CLIP / SigLIP / LiT."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from big_contrast.models import remat as remat_lib
from big_contrast.models.vit import MAPHead
from big_contrast.models.vit import blocks
from big_contrast.models.vit import training_chunks

POOLS = ("last", "first", "gap", "map")


class TextTransformer(nn.Module):
  """Token ids [B, L] -> pooled features [B, width].

  Positions holding `pad_id` are masked out of attention and pooling. Tokenizers
  (input_pipeline.tokenizers) end every text with an end-of-text token, so "last"
  pools it: with `causal` attention that is CLIP's text tower (Radford et al.
  2021); bidirectional attention with "last" is SigLIP's (big_vision).

  Attributes:
    vocab_size: number of token ids.
    width, depth, heads: transformer size; the MLP is 4x wide.
    context_length: the fixed length L the tokenizer pads to (learned positions).
    causal: causal (CLIP) or bidirectional (SigLIP) self-attention.
    pool: "last" (last non-pad token), "first", "gap" (mean of non-pad tokens) or
      "map" (attention pooling).
    pad_id: the padding id.
    dtype, param_dtype: compute and parameter storage dtypes.
    remat: rematerialisation policy of every block (remat.POLICIES).
    scan_layers: run the blocks as one nn.scan (models/vit.py `blocks`).
    block_chunks: in training, each block runs over the batch in this many slices (ViT).
  """
  vocab_size: int
  width: int = 512
  depth: int = 12
  heads: int = 8
  context_length: int = 77
  causal: bool = True
  pool: str = "last"
  pad_id: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  scan_layers: bool = False
  block_chunks: int = 1

  @nn.compact
  def __call__(self, tokens, train: bool = True):
    # No dropout or BatchNorm: `train` only chunks the blocks, for the backward pass.
    if self.pool not in POOLS:
      raise ValueError(f"text pool {self.pool!r} unknown; use one of {POOLS} "
                       "(config.model.text.pool).")
    n, length = tokens.shape
    if length > self.context_length:
      raise ValueError(f"{length} tokens exceed the text tower's context_length "
                       f"{self.context_length}; set config.text.tokenizer.length <= it.")
    valid = tokens != self.pad_id
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 dtype=self.dtype, param_dtype=self.param_dtype, name="embedding")(tokens)
    pos = self.param("pos_embedding", nn.initializers.normal(0.01),
                     (1, self.context_length, self.width), self.param_dtype)
    x = x + pos[:, :length].astype(x.dtype)
    mask = nn.make_attention_mask(valid, valid)
    if self.causal:
      mask = nn.combine_masks(mask, nn.make_causal_mask(tokens))
    x = blocks(x, mask, depth=self.depth, heads=self.heads, mlp_dim=4 * self.width,
               dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat,
               scan=self.scan_layers, chunks=training_chunks(self, train))
    x = remat_lib.wrap(nn.LayerNorm, self.remat)(dtype=self.dtype, param_dtype=self.param_dtype,
                                                 name="norm")(x)  # As the ViT's.
    if self.pool == "last":
      last = jnp.maximum(valid.sum(1) - 1, 0)
      x = x[jnp.arange(n), last]
    elif self.pool == "first":
      x = x[:, 0]
    elif self.pool == "gap":
      w = valid[..., None].astype(x.dtype)
      x = (x * w).sum(1) / jnp.maximum(w.sum(1), 1)
    else:
      x = remat_lib.wrap(MAPHead, self.remat)(self.heads, 4 * self.width, self.dtype,
                                              self.param_dtype, name="map_head")(x, valid)
    return x.astype(jnp.float32)
