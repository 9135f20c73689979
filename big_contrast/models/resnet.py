"""ResNet v1.5 (He et al. 2016) as a Flax Linen module.

BatchNorm runs on whatever batch the module sees. Under `jax.jit` with the
batch sharded over the mesh that is the GLOBAL batch (XLA all-reduces the
statistics), i.e. the SyncBN behaviour needed for contrastive learning comes
for free and matches a single-device run of the same global batch.
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from big_contrast.models import remat as remat_lib

# name -> (block kind, blocks per stage)
DEPTHS = {
    10: ("basic", (1, 1, 1, 1)),   # One block per stage: tests and tiny runs (no torchvision twin).
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

STEMS = ("imagenet", "cifar")


def _Conv(features, kernel_size, strides=1, **kw):
  """Convolution with torchvision's symmetric k//2 padding.

  "SAME" pads (k-s)//2 before and the rest after for strided convs, which
  shifts the sampling grid by a pixel against torchvision's weights.
  """
  pad = tuple((k // 2, k // 2) for k in kernel_size)
  return nn.Conv(features, kernel_size, strides, padding=pad, use_bias=False, **kw)


class _Block(nn.Module):
  filters: int
  strides: int
  bottleneck: bool
  norm: Any
  conv: Any

  @nn.compact
  def __call__(self, x):
    residual = x
    if self.bottleneck:
      y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
      y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
      y = self.conv(self.filters * 4, (1, 1))(y)
    else:
      y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
      y = self.conv(self.filters, (3, 3))(y)
    # Zero-init of the last BN scale makes each block start as identity
    # (Goyal et al. 2017), which stabilises large-batch training.
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(y.shape[-1], (1, 1), self.strides, name="proj")(residual)
      residual = self.norm(name="proj_norm")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet backbone returning globally pooled features [B, C].

  Attributes:
    depth: 18, 34, 50 or 101.
    width: channels of the first stage (64 in the paper).
    stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv,
      no pool) for small images.
    dtype: compute dtype (e.g. bfloat16).
    param_dtype: dtype the parameters are stored in (BatchNorm statistics stay float32).
    remat: rematerialisation policy of every residual block (remat.POLICIES).
  """
  depth: int = 50
  width: int = 64
  stem: str = "imagenet"
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.depth not in DEPTHS:
      raise ValueError(f"ResNet depth {self.depth} unknown; choose from {sorted(DEPTHS)} "
                       "(config.model.depth).")
    kind, stages = DEPTHS[self.depth]
    conv = functools.partial(_Conv, dtype=self.dtype, param_dtype=self.param_dtype)
    # `train` is bound here, so the (rematerialised) blocks take arrays only.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = nn.relu(norm(name="stem_norm")(conv(self.width, (7, 7), 2, name="stem_conv")(x)))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == "cifar":
      x = nn.relu(norm(name="stem_norm")(conv(self.width, (3, 3), 1, name="stem_conv")(x)))
    else:
      raise ValueError(f"ResNet stem {self.stem!r} unknown; use 'imagenet' or 'cifar' "
                       "(config.model.stem).")
    block = remat_lib.wrap(_Block, self.remat)
    for i, blocks in enumerate(stages):
      for j in range(blocks):
        x = block(self.width * 2**i, 2 if (i > 0 and j == 0) else 1,
                  kind == "bottleneck", norm, conv, name=f"stage{i + 1}_block{j + 1}")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

