"""Two towers (image, text) with linear projections, a learned temperature and bias."""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from big_contrast.numerics import l2_normalize


class TwoTower(nn.Module):
  """CLIP / SigLIP / LiT model: image and text towers mapped into one embedding space.

  `__call__(images, tokens)` returns (x, y, t, b): l2-normalised image and text
  embeddings [B, embed_dim], the inverse temperature t = exp(t') and the bias b.
  t' is the learned parameter ("t", log-parametrised so t stays positive; CLIP
  init t = 1/0.07, SigLIP init t = 10); "b" exists only when `bias_init` is
  given (SigLIP: -10). `encode_image` / `encode_text` give one side each
  (zero-shot classification and retrieval), and take `train` separately so a
  locked tower can run in inference mode while the other one trains.

  Parameter paths (what `config.optimizer.frozen` regexes match): image/...,
  image_proj/..., text/..., text_proj/..., t, b.
  """
  image: nn.Module
  text: nn.Module
  embed_dim: int = 512
  temperature_init: float = 1 / 0.07
  bias_init: float | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    proj = lambda: nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype,
                            param_dtype=self.param_dtype)
    self.image_proj, self.text_proj = proj(), proj()
    self.t = self.param("t", nn.initializers.constant(math.log(self.temperature_init)), (),
                        self.param_dtype)
    self.b = (None if self.bias_init is None else
              self.param("b", nn.initializers.constant(self.bias_init), (), self.param_dtype))

  def encode_image(self, images, train: bool = True):
    return l2_normalize(self.image_proj(self.image(images, train=train)))

  def encode_text(self, tokens, train: bool = True):
    return l2_normalize(self.text_proj(self.text(tokens, train=train)))

  def image_features(self, images):
    """The image tower's pooled features before the projection (k-NN, linear probe)."""
    return self.image(images, train=False)

  def scale_and_bias(self):
    """(t, b): the logit scale exp(t') and the bias (0 without one)."""
    return jnp.exp(self.t), jnp.zeros(()) if self.b is None else self.b

  def embed(self, images, tokens, train_image: bool = True, train_text: bool = True):
    return self.encode_image(images, train_image), self.encode_text(tokens, train_text)

  def __call__(self, images, tokens, train_image: bool = True, train_text: bool = True):
    return (*self.embed(images, tokens, train_image, train_text), *self.scale_and_bias())
