import colorsys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from big_contrast import augment

B, H = 8, 16


def _images(seed=0, high=256):
  return np.random.RandomState(seed).randint(0, high, (B, H, H, 3)).astype(np.uint8)


def _config(**overrides):
  cfg = augment.default_config()
  cfg.update(overrides)
  return ml_collections.FrozenConfigDict(cfg)  # Hashable, so it can be a static jit argument.


# Whole pipelines run jitted, as in training: XLA CPU then compiles once per config, where eager
# mode compiles every primitive separately (seconds per test).
_augment = jax.jit(augment.augment_batch, static_argnums=2)
_crop = jax.jit(augment.random_resized_crop, static_argnums=(2, 3, 4))

# Every op off and the crop forced to the whole image.
IDENTITY = dict(crop_size=H, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


def test_views_shape_range_determinism_and_two_keys():
  images, cfg = _images(), _config(crop_size=12, solarize_prob=0.5)
  view1 = _augment(jax.random.key(1), images, cfg)
  assert view1.shape == (B, 12, 12, 3) and view1.dtype == jnp.float32
  assert 0 <= view1.min() and view1.max() <= 1
  np.testing.assert_array_equal(view1, _augment(jax.random.key(1), images, cfg))
  view2 = _augment(jax.random.key(2), images, cfg)
  assert np.abs(view1 - view2).mean(axis=(1, 2, 3)).min() > 1e-3  # Every example's two views differ.


def test_everything_off_is_identity_and_plain_dict_config():
  images = _images()
  cfg = dict(_config(**IDENTITY))
  views = jax.jit(lambda rng, x: augment.augment_batch(rng, x, cfg))(jax.random.key(0), images)
  np.testing.assert_allclose(views, images / 255.0, atol=1e-5)


def test_flip_grayscale_solarize_with_prob_one():
  x, rng = jnp.asarray(_images()[0] / 255.0, jnp.float32), jax.random.key(0)
  np.testing.assert_array_equal(augment.random_flip(rng, x, 1.0), x[:, ::-1])
  gray = augment.random_grayscale(rng, x, 1.0)
  np.testing.assert_array_equal(gray, jnp.broadcast_to(gray[..., :1], gray.shape))
  np.testing.assert_allclose(gray[..., 0], x @ augment.LUMA, atol=1e-6)
  np.testing.assert_allclose(augment.random_solarize(rng, x, 1.0, threshold=0.0), 1 - x, atol=1e-6)


def test_blur_and_crop_keep_a_constant_image_constant():
  constant = jnp.full((H, H, 3), 0.3)
  blurred = augment.random_gaussian_blur(jax.random.key(0), constant, prob=1.0, sigma=(2.0, 2.0), kernel_size=7)
  np.testing.assert_allclose(blurred, constant, atol=1e-6)
  for seed in range(4):
    crop = _crop(jax.random.key(seed), constant, 10, (0.08, 1.0), (0.75, 4 / 3))
    assert crop.shape == (10, 10, 3)
    np.testing.assert_allclose(crop, 0.3, atol=1e-6)


def test_blur_smooths_and_kernel_size():
  image = jnp.asarray(_images()[0] / 255.0, jnp.float32)
  blurred = augment.random_gaussian_blur(jax.random.key(0), image, prob=1.0, sigma=(1.0, 1.0), kernel_size=5)
  assert np.abs(np.diff(blurred, axis=0)).mean() < 0.5 * np.abs(np.diff(image, axis=0)).mean()
  assert [augment.blur_kernel_size(s) for s in (16, 32, 96, 224)] == [3, 3, 9, 23]


def test_crop_falls_back_to_centre_when_no_box_fits():
  image = jnp.asarray(np.arange(H * 2 * H * 3).reshape(H, 2 * H, 3), jnp.float32)
  # A 1:1 box cannot cover 100% of a 1:2 image: the fallback is the central H x H square.
  crop = _crop(jax.random.key(0), image, H, (1.0, 1.0), (1.0, 1.0))
  np.testing.assert_allclose(crop, image[:, H // 2:H // 2 + H], rtol=1e-6)


def test_brightness_only_scales_each_image():
  images = _images(high=128)  # <= 0.5, so a factor <= 1.4 never clips.
  cfg = _config(**{**IDENTITY, 'color_jitter_prob': 1.0, 'contrast': 0.0, 'saturation': 0.0, 'hue': 0.0})
  views = _augment(jax.random.key(0), images, cfg)
  x = images / 255.0
  factor = views.sum(axis=(1, 2, 3)) / x.sum(axis=(1, 2, 3))
  np.testing.assert_allclose(views, factor[:, None, None, None] * x, atol=1e-5)
  assert np.all((0.6 - 1e-6 <= factor) & (factor <= 1.4 + 1e-6)) and np.ptp(factor) > 1e-3


def test_adjust_hue_matches_colorsys():
  rgb = np.random.RandomState(0).rand(64, 3).astype(np.float32)
  np.testing.assert_allclose(augment.adjust_hue(rgb, 0.0), rgb, atol=1e-5)
  expected = [colorsys.hsv_to_rgb((h + 0.3) % 1, s, v) for h, s, v in (colorsys.rgb_to_hsv(*p) for p in rgb)]
  np.testing.assert_allclose(augment.adjust_hue(rgb, 0.3), expected, atol=1e-5)


def test_each_view_depends_only_on_its_own_key_and_image():
  """What makes views independent of how the batch is split over devices or hosts."""
  rng = jax.random.PRNGKey(3)
  images = _images(8)
  cfg = augment.default_config()
  views = jax.jit(lambda r, x: augment.augment_batch(r, x, cfg))(rng, images)
  keys = jax.random.split(rng, 8)
  one = jax.jit(lambda k, x: augment.augment_image(k, x.astype(jnp.float32) / 255.0, cfg))
  for i in (0, 5):
    np.testing.assert_allclose(views[i], one(keys[i], images[i]), atol=1e-6)
  # Changing the other images leaves view 5 as it was.
  others = np.asarray(images).copy()
  others[np.arange(8) != 5] = 255 - others[np.arange(8) != 5]
  changed = jax.jit(lambda r, x: augment.augment_batch(r, x, cfg))(rng, others)
  np.testing.assert_allclose(changed[5], views[5], atol=1e-6)
