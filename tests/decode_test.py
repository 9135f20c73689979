"""Host decoding (input_pipeline/decode.py) against Pillow, on real photographs."""
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from input_pipeline import decode
from tests import photos

PIL_TRANSPOSE = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM,
                 5: Image.TRANSPOSE, 6: Image.ROTATE_270, 7: Image.TRANSVERSE,
                 8: Image.ROTATE_90}


def _pil(data):
  return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


def _encode(image, fmt="JPEG", **kw):
  buf = io.BytesIO()
  image.save(buf, fmt, **kw)
  return buf.getvalue()


def _mean_abs(a, b):
  return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean()


def test_full_size_jpeg_decode_matches_pillow():
  data = photos.jpeg(300, 200, seed=1)
  image = decode.decode(data)
  assert image.shape == (200, 300, 3) and image.dtype == np.uint8
  assert _mean_abs(image, _pil(data)) < 1.0   # Both are libjpeg-turbo; IDCT rounding only.


def test_reduced_jpeg_decode_picks_the_smallest_dct_scale_that_keeps_the_minimum():
  data = photos.jpeg(640, 480, seed=2)
  image = decode.decode(data, min_height=100, min_width=100)
  assert image.shape == (120, 160, 3)  # 1/4: 1/8 would give 60 rows, under the minimum.
  reference = np.asarray(Image.fromarray(_pil(data)).resize((160, 120), Image.BOX))
  assert _mean_abs(image, reference) < 3.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_read_and_applied_as_pillow_does(orientation):
  stored = Image.fromarray(decode.decode(photos.jpeg(64, 40, seed=3)))
  exif = Image.Exif()
  exif[0x0112] = orientation
  data = _encode(stored, exif=exif.tobytes(), quality=95)
  assert decode.header(data).orientation == orientation
  expected = _pil(data)
  assert decode.header(data)[:2] == expected.shape[:2]
  assert _mean_abs(decode.decode(data), expected) < 1.0
  # orient() is exactly PIL's transpose for that orientation.
  pixels = np.random.default_rng(0).integers(0, 255, (5, 7, 3), np.uint8)
  want = pixels if orientation == 1 else np.asarray(
      Image.fromarray(pixels).transpose(PIL_TRANSPOSE[orientation]))
  np.testing.assert_array_equal(decode.orient(pixels, orientation), want)


@pytest.mark.parametrize("mode, fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"),
                                       ("P", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP")])
def test_every_mode_and_format_decodes_to_rgb_like_pillow(mode, fmt):
  image = Image.fromarray(decode.decode(photos.jpeg(48, 32, seed=4))).convert(mode)
  data = _encode(image, fmt)
  out = decode.decode(data)
  assert out.shape == (32, 48, 3) and out.dtype == np.uint8
  assert _mean_abs(out, _pil(data)) < 1.0


def test_sixteen_bit_gray_keeps_its_high_byte_instead_of_clipping_white():
  # Pillow's own convert("RGB") clips these at 255: a gradient would come out nearly white.
  gray = np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (32, 1))
  out = decode.decode(_encode(Image.fromarray(gray), "PNG"))
  assert out.shape == (32, 48, 3)
  for channel in range(3):
    np.testing.assert_array_equal(out[..., channel], (gray >> 8).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_an_orientation_outside_exif_range_is_ignored_as_pillow_ignores_it(fmt):
  stored = Image.fromarray(decode.decode(photos.jpeg(64, 40, seed=3)))
  exif = Image.Exif()
  exif[0x0112] = 9
  data = _encode(stored, fmt, exif=exif.tobytes())
  assert decode.header(data)[:3] == (40, 64, 1)
  assert decode.center_view(data, 16).shape == (16, 16, 3)
  assert _mean_abs(decode.decode(data), _pil(data)) < 1.0


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff" + bytes(50)],
                         ids=["empty", "text", "jpeg-magic-only"])
def test_bytes_that_are_not_an_image_raise_decode_error(data):
  with pytest.raises(decode.DecodeError):
    decode.decode(data)


def test_a_truncated_jpeg_raises_instead_of_decoding_grey():
  data = photos.jpeg(200, 150, seed=5)
  with pytest.raises(decode.DecodeError):
    decode.decode(data[:len(data) // 2])


def test_random_box_follows_torchvision_rules():
  rng = np.random.default_rng(0)
  for _ in range(500):
    top, left, h, w = decode.random_box(rng, 375, 500, (0.08, 1.0), (3 / 4, 4 / 3))
    assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
    assert 0.08 * 0.9 <= h * w / (375 * 500) <= 1.0
    assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
  # No draw fits a 1000×10 image at these scales: the centred crop with the aspect clipped.
  assert decode.random_box(rng, 10, 1000, (0.9, 1.0), (3 / 4, 4 / 3)) == (0, 493, 10, 13)


def test_random_views_equal_a_full_resolution_crop_and_resize():
  data = photos.jpeg(640, 480, seed=6)
  specs = [decode.ViewSpec(48, (0.1, 0.5)), decode.ViewSpec(24, (0.5, 1.0))]
  views = decode.random_views(data, specs, np.random.default_rng(7))
  again = decode.random_views(data, specs, np.random.default_rng(7))
  rng = np.random.default_rng(7)
  full = Image.fromarray(_pil(data))
  for view, repeat, spec in zip(views, again, specs):
    np.testing.assert_array_equal(view, repeat)
    assert view.shape == (spec.size, spec.size, 3)
    top, left, h, w = decode.random_box(rng, 480, 640, spec.scale, spec.ratio)
    reference = np.asarray(full.resize((spec.size,) * 2, Image.BILINEAR,
                                       box=(left, top, left + w, top + h)))
    assert _mean_abs(view, reference) < 6.0, spec
  assert not np.array_equal(views[0], decode.random_views(
      data, specs, np.random.default_rng(8))[0])


def test_one_decode_serves_all_views_at_the_least_reduced_scale(monkeypatch):
  decoded = []
  real = decode.decode
  monkeypatch.setattr(decode, "decode", lambda *a, **k: decoded.append(real(*a, **k)) or
                      decoded[-1])
  data = photos.jpeg(800, 600, seed=8)
  decode.random_views(data, [decode.ViewSpec(32, (1.0, 1.0), (4 / 3, 4 / 3))] * 2,
                      np.random.default_rng(0))
  assert [d.shape for d in decoded] == [(75, 100, 3)]  # 1/8 still leaves 32 px per crop side.
  decoded.clear()
  decode.random_views(data, [decode.ViewSpec(32, (1.0, 1.0), (4 / 3, 4 / 3)),
                             decode.ViewSpec(200, (1.0, 1.0), (4 / 3, 4 / 3))],
                      np.random.default_rng(0))
  assert [d.shape for d in decoded] == [(225, 300, 3)]  # 3/8: the 200 view's need.


def test_center_view_resizes_the_short_side_and_crops_the_centre():
  data = photos.jpeg(400, 300, seed=9)
  view = decode.center_view(data, 64)
  full = Image.fromarray(_pil(data))
  reference = np.asarray(full.resize((85, 64), Image.BILINEAR, reducing_gap=None))[:, 10:74]
  assert view.shape == (64, 64, 3)
  assert _mean_abs(view, reference) < 6.0
