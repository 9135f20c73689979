"""Host decoding of encoded images at full resolution: random-resized crops and eval views.

Every view of an example comes from ONE decode of its bytes. The crop boxes are drawn first,
in the full-resolution image's coordinates (torchvision's RandomResizedCrop rule), and the
JPEG is then decoded at the smallest DCT scale (libjpeg-turbo, 1/8 ... 8/8, through
simplejpeg) that still gives every box at least its output size in pixels: decoding an
ImageNet photo for two 224 crops of a 500×375 image often needs half the pixels, and a 96
multi-crop view an eighth. Other formats (PNG, GIF, BMP, WebP, TIFF) and CMYK JPEGs are
decoded by Pillow. EXIF orientation is applied, so boxes refer to the upright image.

Resampling (OpenCV): linear interpolation while the box shrinks by less than 2 (after DCT
scaling that is the common case, and linear is then alias-free enough and 5× faster than
area averaging), area averaging beyond. Photometric augmentation stays on the device.
"""
import io
import math
import struct
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps

# The pipeline runs in several worker processes: one OpenCV thread each keeps a core per worker.
cv2.setNumThreads(1)


class DecodeError(ValueError):
  """The bytes are not an image this pipeline can decode (broken, truncated, unknown format)."""


class ViewSpec(NamedTuple):
  """One random-resized-crop view: output side `size`, area `scale` and aspect `ratio` ranges."""
  size: int
  scale: tuple = (0.08, 1.0)
  ratio: tuple = (3 / 4, 4 / 3)


def is_jpeg(data: bytes) -> bool:
  return data[:3] == b"\xff\xd8\xff"


def _exif_orientation(data: bytes) -> int:
  """The EXIF Orientation (1..8) of a JPEG, read from its APP1 segment without decoding."""
  pos = 2
  while pos + 4 <= len(data) and data[pos] == 0xFF:
    marker = data[pos + 1]
    if marker in (0xDA, 0xD9):  # Start of scan / end of image: no more metadata.
      return 1
    length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
    segment = data[pos + 4:pos + 2 + length]
    if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
      tiff = segment[6:]
      order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
      if order is None or len(tiff) < 8:
        return 1
      ifd = struct.unpack(order + "I", tiff[4:8])[0]
      if ifd + 2 > len(tiff):
        return 1
      (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
      for i in range(count):
        entry = tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
        if len(entry) < 12:
          break
        tag, _, _ = struct.unpack(order + "HHI", entry[:8])
        if tag == 0x0112:
          value = struct.unpack(order + "H", entry[8:10])[0]
          return value if 1 <= value <= 8 else 1
      return 1
    pos += 2 + length
  return 1


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
  """Applies EXIF `orientation` to stored pixels (as PIL.ImageOps.exif_transpose does)."""
  if orientation in (5, 6, 7, 8):
    image = image.transpose(1, 0, 2)
    orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
  if orientation in (2, 3):
    image = image[:, ::-1]
  if orientation in (3, 4):
    image = image[::-1]
  return image


# Pillow's 16-bit (and 32-bit integer) grayscale modes: convert("RGB") clips them at 255.
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _pil_image(data: bytes) -> Image.Image:
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_GRAY:  # 16-bit samples: keep their 8 high bits.
      image = Image.fromarray((np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8))
    # As torchvision's loader: palette, gray, alpha and CMYK images all become RGB.
    return image.convert("RGB")
  except Exception as e:  # Pillow raises many types for broken files.
    raise DecodeError(f"{type(e).__name__}: {e}") from None


class Header(NamedTuple):
  height: int          # Upright (EXIF-oriented) size.
  width: int
  orientation: int
  jpeg: bool           # Decoded by simplejpeg with DCT scaling (else Pillow, full size).


def header(data: bytes) -> Header:
  """The upright size of an encoded image, read without decoding its pixels."""
  if is_jpeg(data):
    try:
      height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as e:
      raise DecodeError(str(e)) from None
    orientation = _exif_orientation(data)
    if orientation >= 5:
      height, width = width, height
    # CMYK/YCCK JPEGs (Adobe inverts them) go through Pillow, which handles the inversion.
    return Header(height, width, orientation, colorspace not in ("CMYK", "YCCK"))
  try:
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    orientation = image.getexif().get(0x0112, 1)
  except Exception as e:
    raise DecodeError(f"{type(e).__name__}: {e}") from None
  if orientation not in range(1, 9):  # exif_transpose ignores it too.
    orientation = 1
  if orientation >= 5:
    height, width = width, height
  return Header(height, width, orientation, False)


def decode(data: bytes, min_height: int = 0, min_width: int = 0,
           head: Header | None = None) -> np.ndarray:
  """uint8 [H', W', 3] upright RGB, at least min_height × min_width where the format allows
  a cheaper reduced decode (JPEG), else at full size."""
  head = head or header(data)
  if not head.jpeg:
    return np.asarray(_pil_image(data))
  if head.orientation >= 5:  # The minimum applies to the upright image.
    min_height, min_width = min_width, min_height
  try:
    image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_height,
                                   min_width=min_width)
  except ValueError as e:
    raise DecodeError(str(e)) from None
  return orient(image, head.orientation)


def random_box(rng: np.random.Generator, height: int, width: int, scale, ratio,
               attempts: int = 10) -> tuple[int, int, int, int]:
  """(top, left, h, w): torchvision's RandomResizedCrop.get_params, drawn from `rng`."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  # Fallback: the centred crop of the whole image, its aspect clipped into `ratio`.
  aspect = width / height
  if aspect < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif aspect > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]; see the module docstring for the filter."""
  if image.shape[:2] == (height, width):
    return np.ascontiguousarray(image)
  shrink = min(image.shape[0] / height, image.shape[1] / width)
  interpolation = cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR
  return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interpolation)


def _crop_resize(image: np.ndarray, box, full: Header, size: int) -> np.ndarray:
  """The full-resolution `box` of an image decoded at a (possibly) reduced size."""
  sy, sx = image.shape[0] / full.height, image.shape[1] / full.width
  top, left, h, w = box
  y0, x0 = int(round(top * sy)), int(round(left * sx))
  y1 = max(y0 + 1, min(image.shape[0], int(round((top + h) * sy))))
  x1 = max(x0 + 1, min(image.shape[1], int(round((left + w) * sx))))
  return resize(image[y0:y1, x0:x1], size, size)


def random_views(data: bytes, specs: Sequence[ViewSpec],
                 rng: np.random.Generator) -> list[np.ndarray]:
  """One uint8 [size, size, 3] random-resized crop per spec, from one decode of `data`."""
  head = header(data)
  boxes = [random_box(rng, head.height, head.width, s.scale, s.ratio) for s in specs]
  # The decode must keep every box at least its output size: the least reduction wins.
  need = min(1.0, max(s.size / min(b[2], b[3]) for s, b in zip(specs, boxes)))
  image = decode(data, math.ceil(head.height * need), math.ceil(head.width * need), head)
  return [_crop_resize(image, b, head, s.size) for s, b in zip(specs, boxes)]


def center_view(data: bytes, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: the short side resized to `size`, centre crop (evaluation)."""
  head = header(data)
  need = min(1.0, size / min(head.height, head.width))
  image = decode(data, math.ceil(head.height * need), math.ceil(head.width * need), head)
  side = min(head.height, head.width)
  box = ((head.height - side) // 2, (head.width - side) // 2, side, side)
  return _crop_resize(image, box, head, size)
