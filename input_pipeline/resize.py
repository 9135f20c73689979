"""Deterministic host-side image resizing in plain numpy.

Numpy rather than Pillow/OpenCV so that the embedded dataset needs no imaging
library and every host produces bit-identical pixels whatever is installed.
The filter matches `jax.image.resize(..., method="linear", antialias=True)`:
bilinear when upsampling, a widened triangle (area-like) when downsampling so
that large images do not alias.
"""

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] interpolation matrix of one axis."""
  scale = out_size / in_size
  # Output pixel centres in input coordinates (half-pixel convention).
  centres = (np.arange(out_size) + 0.5) / scale - 0.5
  kernel_width = max(1.0 / scale, 1.0)
  distance = np.abs(np.arange(in_size)[None, :] - centres[:, None])
  weights = np.maximum(0.0, 1.0 - distance / kernel_width)
  # Renormalising clamps at the borders instead of fading to black.
  weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
  weights.flags.writeable = False  # Shared through the cache.
  return weights


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes [H, W, C] to float32 [height, width, C] (separable, antialiased)."""
  rows = _weights(image.shape[0], height)
  cols = _weights(image.shape[1], width)
  image = image.astype(np.float32)
  return np.einsum("oh,hwc,pw->opc", rows, image, cols, optimize=True)


def to_uint8(image: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def center_square_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Short side resized to `size`, centre crop: uint8 [size, size, 3].

  Cropping the centred square first and resizing it once is the same as
  resize-then-crop (up to sub-pixel rounding) but only filters kept pixels.
  Grayscale images are replicated to 3 channels so every source looks alike.
  """
  height, width = image.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  image = image[top:top + side, left:left + side]
  if image.ndim == 2:
    image = image[..., None]
  if side != size:
    image = to_uint8(resize(image, size, size))
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image, dtype=np.uint8)
