"""Heads put on top of a backbone's pooled features."""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLPHead(nn.Module):
  """Linear-BN-ReLU hidden layers, then a linear output layer.

  SimCLR's projector g(·) is MLPHead((2048,), 128); SimCLR v2 and MoCo v3 use
  more hidden layers and `last_bn=True` (BN without affine on the output).
  """
  hidden_dims: Sequence[int] = (2048,)
  out_dim: int = 128
  use_bn: bool = True
  last_bn: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    bn = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                   dtype=self.dtype, param_dtype=self.param_dtype, **kw)
    x = x.astype(self.dtype)
    for i, d in enumerate(self.hidden_dims):
      x = nn.Dense(d, use_bias=not self.use_bn, dtype=self.dtype, param_dtype=self.param_dtype,
                   name=f"hidden{i}")(x)
      if self.use_bn:
        x = bn(name=f"hidden{i}_norm")(x)
      x = nn.relu(x)
    x = nn.Dense(self.out_dim, use_bias=not self.last_bn, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="out")(x)
    if self.last_bn:
      x = bn(use_scale=False, use_bias=False, name="out_norm")(x)
    return x.astype(jnp.float32)
