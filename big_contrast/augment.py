"""Device-side SimCLR-style augmentation with per-example RNG.

Every view is a pure function of (that example's key, that image): `augment_batch` splits
the batch key into one key per example and vmaps `augment_image`, so nothing depends on the
batch as a whole and a sharded batch gives exactly the views of an unsharded one.

Each `random_*` op maps (rng, image [H, W, C] float in [0, 1]) to an image; an op whose
probability is 0 returns its input unchanged.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from big_contrast import settings

# ITU-R 601-2 luma, the weights torchvision and PIL use for grayscale. NumPy, not jnp: a jnp
# constant would start the backend at import, before jax.distributed.initialize can run.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# `config.augment`, SimCLR's (Chen et al., 2020) augmentation; BYOL adds solarize_prob=0.2 to
# one view (`config.augment_views`).
SETTINGS = dict(
    crop_size=settings.integer(32, low=1),
    crop_scale=settings.interval((0.08, 1.0), 0.0, 1.0),
    crop_ratio=settings.interval((3 / 4, 4 / 3), 1e-3),
    flip_prob=settings.probability(0.5),
    color_jitter_prob=settings.probability(0.8),
    brightness=settings.number(0.4, low=0), contrast=settings.number(0.4, low=0),
    saturation=settings.number(0.4, low=0), hue=settings.number(0.1, low=0, high=0.5),
    grayscale_prob=settings.probability(0.2),
    blur_prob=settings.probability(0.5), blur_sigma=settings.interval((0.1, 2.0), 0.0),
    blur_kernel_frac=settings.number(0.1, low=0),
    solarize_prob=settings.probability(0.0), solarize_threshold=settings.probability(0.5),
)


def default_config() -> ml_collections.ConfigDict:
  return settings.defaults(SETTINGS)


def _with_prob(rng, prob, op, image):
  """`op(key, image)` with probability `prob`, else `image` bit for bit."""
  if isinstance(prob, (int, float)) and prob <= 0:
    return image  # Statically off: skip the compute too (keys are split up front, so no draw shifts).
  k_apply, k_op = jax.random.split(rng)
  return jnp.where(jax.random.bernoulli(k_apply, prob), op(k_op, image), image)


def random_resized_crop(rng, image, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
  """torchvision's RandomResizedCrop, resampled bilinearly (antialiased) to [size, size, C].

  torchvision draws up to `attempts` (area, log-aspect) pairs and keeps the first that fits;
  here all are drawn at once and the first fitting one is selected, so the shape stays static.
  If none fits, it takes the central crop with the aspect ratio clipped into `ratio`. Crop
  sides stay fractional (no rounding): the resampler handles sub-pixel boxes.
  """
  height, width, channels = image.shape
  # One draw for all the numbers: each jax.random call is a separate threefry kernel to compile.
  u_area, u_aspect, u_pos = jnp.split(jax.random.uniform(rng, (2 * attempts + 2,)), [attempts, 2 * attempts])
  area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
  log_ratio = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_aspect)
  h, w = jnp.sqrt(area / aspect), jnp.sqrt(area * aspect)
  fits = (h <= height) & (w <= width)
  first = jnp.argmax(fits)
  # Fallback box (static): whole image, trimmed to the nearest allowed aspect ratio.
  fallback_aspect = min(max(width / height, min(ratio)), max(ratio))
  fallback_h = min(height, width / fallback_aspect)
  found = fits.any()
  h = jnp.where(found, h[first], fallback_h)
  w = jnp.where(found, w[first], fallback_h * fallback_aspect)
  pos = jnp.where(found, u_pos, 0.5)  # 0.5: centred fallback.
  top_left = pos * (jnp.array([height, width]) - jnp.stack([h, w]))
  # scale_and_translate maps input coordinate u to u * scale + translation.
  zoom = size / jnp.stack([h, w])
  return jax.image.scale_and_translate(
      image, (size, size, channels), (0, 1), zoom, -top_left * zoom, method='linear', antialias=True)


def random_flip(rng, image, prob=0.5):
  """Horizontal (left-right) flip."""
  return _with_prob(rng, prob, lambda _, x: x[:, ::-1], image)


def _grayscale(image):
  return jnp.broadcast_to((image @ LUMA)[..., None], image.shape)


def _rgb_to_hsv(image):
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  v = image.max(-1)
  chroma = v - image.min(-1)
  s = jnp.where(v > 0, chroma / jnp.where(v > 0, v, 1), 0)
  c = jnp.where(chroma > 0, chroma, 1)  # Grays have no hue; avoid 0/0 and set it to 0 below.
  h = jnp.where(v == r, (g - b) / c, jnp.where(v == g, 2 + (b - r) / c, 4 + (r - g) / c))
  return jnp.where(chroma > 0, (h / 6) % 1, 0), s, v


def _hsv_to_rgb(h, s, v):
  # f(n) = v - v s clip(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, with (R, G, B) = f(5), f(3), f(1).
  k = (jnp.array([5.0, 3.0, 1.0]) + 6 * h[..., None]) % 6
  return v[..., None] * (1 - s[..., None] * jnp.clip(jnp.minimum(k, 4 - k), 0, 1))


def adjust_hue(image, delta):
  """Rotates hue by `delta` turns (torchvision's hue_factor)."""
  h, s, v = _rgb_to_hsv(image)
  return _hsv_to_rgb((h + delta) % 1, s, v)


def random_color_jitter(rng, image, prob=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1):
  """torchvision's ColorJitter: the four adjustments in a random order per example."""
  def jitter(key, x):
    # One draw (each jax.random call is a threefry kernel to compile): 4 factors, 4 ranks.
    u_factor, u_order = jax.random.uniform(key, (2, 4))

    def uniform(i, low, high):
      return low + (high - low) * u_factor[i]

    def blend(x, other, f):
      return jnp.clip(f * x + (1 - f) * other, 0, 1)

    adjustments = [
        (brightness, lambda x: blend(x, 0.0, uniform(0, max(0.0, 1 - brightness), 1 + brightness))),
        (contrast, lambda x: blend(x, (x @ LUMA).mean(), uniform(1, max(0.0, 1 - contrast), 1 + contrast))),
        (saturation, lambda x: blend(x, _grayscale(x), uniform(2, max(0.0, 1 - saturation), 1 + saturation))),
        (hue, lambda x: adjust_hue(x, uniform(3, -hue, hue))),
    ]
    # Like torchvision, a zero strength drops the adjustment (hue's HSV round trip is not exact).
    ops = [op for strength, op in adjustments if strength > 0]
    if not ops:
      return x
    order = jnp.argsort(u_order[:len(ops)])  # Ranks of i.i.d. uniforms: a uniform permutation.
    for i in range(len(ops)):
      x = jax.lax.switch(order[i], ops, x)
    return x
  return _with_prob(rng, prob, jitter, image)


def random_grayscale(rng, image, prob=0.2):
  return _with_prob(rng, prob, lambda _, x: _grayscale(x), image)


def blur_kernel_size(crop_size, frac=0.1):
  """SimCLR's kernel: ~`frac` of the image side, odd, at least 3."""
  return max(3, int(frac * crop_size) | 1)


def random_gaussian_blur(rng, image, prob=0.5, sigma=(0.1, 2.0), kernel_size=3):
  """Separable Gaussian blur, sigma ~ U(sigma), reflect padding as in torchvision."""
  def blur(key, x):
    s = jax.random.uniform(key, minval=sigma[0], maxval=sigma[1])
    radius = kernel_size // 2
    taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / s) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
      padded = jnp.pad(x, [(radius, radius) if a == axis else (0, 0) for a in range(3)], 'reflect')
      n = x.shape[axis]
      x = sum(taps[t] * jax.lax.slice_in_dim(padded, t, t + n, axis=axis) for t in range(kernel_size))
    return x
  return _with_prob(rng, prob, blur, image)


def random_solarize(rng, image, prob=0.0, threshold=0.5):
  return _with_prob(rng, prob, lambda _, x: jnp.where(x >= threshold, 1 - x, x), image)


def augment_image(rng, image, cfg, crop=True):
  """One view of one float image [H, W, C] in [0, 1]: crop, flip, jitter, gray, blur, solarize.

  crop=False: the image is a view the host already cropped (input_pipeline/decode.py) at
  `cfg.crop_size`; only the flip and the photometric ops apply.
  """
  k_crop, k_flip, k_jitter, k_gray, k_blur, k_solarize = jax.random.split(rng, 6)
  if crop:
    x = random_resized_crop(k_crop, image, cfg.crop_size, cfg.crop_scale, cfg.crop_ratio)
    x = jnp.clip(x, 0, 1)  # The resampling weights are convex, but rounding can step outside.
  else:
    x = image
  x = random_flip(k_flip, x, cfg.flip_prob)
  x = random_color_jitter(k_jitter, x, cfg.color_jitter_prob,
                          cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
  x = random_grayscale(k_gray, x, cfg.grayscale_prob)
  x = random_gaussian_blur(k_blur, x, cfg.blur_prob, cfg.blur_sigma,
                           blur_kernel_size(cfg.crop_size, cfg.blur_kernel_frac))
  x = random_solarize(k_solarize, x, cfg.solarize_prob, cfg.solarize_threshold)
  return jnp.clip(x, 0, 1)


def augment_batch(rng, images, cfg, crop=True) -> jnp.ndarray:
  """Views [B, S, S, C] float32 in [0, 1] of uint8 (or [0, 1] float) images [B, H, W, C]."""
  if isinstance(cfg, dict):
    cfg = ml_collections.ConfigDict(cfg)
  x = jnp.asarray(images, jnp.float32)
  if jnp.issubdtype(images.dtype, jnp.integer):
    x = x / 255.0
  keys = jax.random.split(rng, images.shape[0])
  return jax.vmap(lambda key, image: augment_image(key, image, cfg, crop))(keys, x)
