"""Small real photographs, in the formats users hold, for tests of the real-data input pipeline.

Built from the sample photos inside scikit-image's wheel (read from its data/ folder with Pillow,
without importing skimage): an ImageNet-style class-folder tree, img2dataset-style webdataset
shards, an open_clip-style captions CSV, and single JPEGs, each with a few deliberately broken
files. Seeded, so the same arguments write the same bytes.
"""
import csv
import functools
import importlib.util
import io
import json
import os
import tarfile

import numpy as np
from PIL import Image, ImageOps

CLASSES = ("astronaut", "chelsea", "coffee")
FORMATS = ("jpeg", "progressive", "png", "rgba", "gray", "cmyk", "exif")
_EXTRA = ("rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")  # More for jpeg().
_SUBJECTS = {
    "astronaut": ("an astronaut", "an astronaut in a spacesuit", "a woman in a white spacesuit"),
    "chelsea": ("a cat", "a tabby cat", "a ginger cat looking to the side"),
    "coffee": ("a cup of coffee", "a cup of coffee on a table", "coffee in a red cup"),
}
_TEMPLATES = ("a photo of {s}, {c}", "{s}, {c}", "{c} photo of {s}", "{s} ({c})")
# EXIF Orientation -> how to store the upright pixels so that applying the tag undoes it.
_STORE = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
          8: Image.Transpose.ROTATE_270}


@functools.cache
def _data_dir():
  spec = importlib.util.find_spec("skimage")
  if spec is None:
    raise ImportError("tests/photos.py needs scikit-image's sample photos: "
                      "pip install scikit-image (it is in the test extras)")
  return os.path.join(spec.submodule_search_locations[0], "data")


@functools.cache
def _photo(name):
  file = name if "." in name else name + ".png"
  with Image.open(os.path.join(_data_dir(), file)) as im:
    return im.convert("RGB")


def _crop(rng, name, long_side=None, size=None):
  """A random crop (20-100% of the area, aspect 3:4-4:3, or size's) of a photo, resized."""
  photo = _photo(name)
  pw, ph = photo.size
  aspect = size[0] / size[1] if size else float(np.exp(rng.uniform(np.log(.75), np.log(4 / 3))))
  area = rng.uniform(0.2, 1.0) * pw * ph
  w, h = min(pw, np.sqrt(area * aspect)), min(ph, np.sqrt(area / aspect))
  x, y = rng.uniform(0, pw - w), rng.uniform(0, ph - h)
  if size is None:
    long_side = long_side or int(rng.integers(64, 321))
    size = ((long_side, round(long_side * h / w)) if w >= h else
            (round(long_side * w / h), long_side))
  im = photo.resize(size, Image.Resampling.BILINEAR, box=(x, y, x + w, y + h))
  return im, w * h / (pw * ph)


def _caption(rng, cls, im, area):
  c = "close up" if area < 0.45 else "cropped" if area < 0.8 else "full view"
  if im.width > 1.2 * im.height:
    c = "wide, " + c
  s = _SUBJECTS[cls][rng.integers(3)]
  return _TEMPLATES[rng.integers(len(_TEMPLATES))].format(s=s, c=c)


def _encode(im, fmt, quality, orientation=6):
  f = io.BytesIO()
  if fmt in ("jpeg", "progressive", "gray", "cmyk"):
    mode = {"gray": "L", "cmyk": "CMYK"}.get(fmt, "RGB")
    im.convert(mode).save(f, "JPEG", quality=quality, progressive=fmt == "progressive")
  elif fmt == "png":
    im.save(f, "PNG")
  elif fmt == "rgba":  # A real alpha ramp, so a reader must decide what to do with it.
    alpha = np.linspace(64, 255, im.width, dtype=np.uint8)[None].repeat(im.height, 0)
    rgba = im.copy()
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(f, "PNG")
  else:  # "exif"
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.transpose(_STORE[orientation]).save(f, "JPEG", quality=quality, exif=exif.tobytes())
  return f.getvalue()


def _jpeg_bytes(im, quality=90):
  f = io.BytesIO()
  im.save(f, "JPEG", quality=quality)
  return f.getvalue()


def _header_only(data):
  """A JPEG cut a few bytes past its SOS marker: no decoder can produce the pixels."""
  return data[:data.index(b"\xff\xda") + 20]


def _corrupt_png(rng, im):
  data = bytearray(_encode(im, "png", 0))
  mid = len(data) // 2
  data[mid:mid + 256] = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
  return bytes(data)


def image_folder(root, train_per_class=12, val_per_class=4, broken=True):
  """Writes root/{train,val}/<class>/<image>, mixing FORMATS in each split; see module doc."""
  rng = np.random.default_rng(1)
  out = {"classes": CLASSES, "counts": {}, "broken": [], "upright": {}, "formats": {}}
  for split, per_class in (("train", train_per_class), ("val", val_per_class)):
    out["counts"][split] = {}
    for c, cls in enumerate(CLASSES):
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i in range(per_class):
        fmt = FORMATS[(i + 3 * c) % len(FORMATS)]
        # Every sixth train image is large, so reduced-size JPEG decoding gets exercised.
        big = split == "train" and i % 6 == 5
        im, _ = _crop(rng, cls, int(rng.integers(560, 701)) if big else None)
        if fmt == "exif" and im.width == im.height:  # Non-square, so a lost rotation shows.
          im = im.resize((im.width + 8, im.height))
        ext = {"png": ".png", "rgba": ".png", "gray": ".JPEG"}.get(
            fmt, (".JPEG", ".jpg")[i % 2])
        rel = f"{split}/{cls}/{cls}_{split}_{i:04d}{ext}"
        with open(os.path.join(root, rel), "wb") as f:
          # Cycle EXIF orientations 3, 6, 8 so that all of them appear.
          f.write(_encode(im, fmt, int(rng.integers(70, 96)), (3, 6, 8)[len(out["upright"]) % 3]))
        out["formats"][rel] = fmt
        if fmt == "exif":  # What a correct reader returns: Pillow's decode, turned upright.
          with Image.open(os.path.join(root, rel)) as stored:
            out["upright"][rel] = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
      out["counts"][split][cls] = per_class
  if broken:
    jpg = _jpeg_bytes(_crop(rng, CLASSES[2])[0])
    bad = {f"train/{CLASSES[0]}/empty.jpg": b"",
           f"train/{CLASSES[1]}/not_an_image.JPEG": b"this is text, not a JPEG\n",
           f"train/{CLASSES[2]}/truncated.jpg": jpg[:len(jpg) * 2 // 5],
           f"train/{CLASSES[0]}/corrupt.png": _corrupt_png(rng, _crop(rng, CLASSES[0])[0])}
    for rel, data in bad.items():
      os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
      with open(os.path.join(root, rel), "wb") as f:
        f.write(data)
    out["broken"] = list(bad)
    # Not an image by extension: a reader should skip it, neither count nor fail on it.
    with open(os.path.join(root, "train", CLASSES[1], "README.txt"), "w") as f:
      f.write("Photos from scikit-image's sample data.\n")
  return out


def _add(tar, name, data):
  info = tarfile.TarInfo(name)  # Fixed mtime/owner, so the tar bytes are deterministic.
  info.size, info.mode = len(data), 0o644
  tar.addfile(info, io.BytesIO(data))


def webdataset_shards(out_dir, num_shards=2, per_shard=10, broken=True):
  """Writes img2dataset-style out_dir/{i:05d}.tar shards; `captions` holds the valid samples'."""
  rng = np.random.default_rng(2)
  os.makedirs(out_dir, exist_ok=True)
  out = {"files": [], "num_valid": 0, "broken_keys": [], "no_caption_keys": [], "captions": {}}
  for shard in range(num_shards):
    path = os.path.join(out_dir, f"{shard:05d}.tar")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
      for i in range(per_shard):
        key = f"{shard * 10000 + i:09d}"
        cls = CLASSES[(shard * per_shard + i) % len(CLASSES)]
        im, area = _crop(rng, cls, int(rng.integers(560, 701)) if i % 7 == 6 else None)
        caption = _caption(rng, cls, im, area)
        jpg = _jpeg_bytes(im, int(rng.integers(70, 96)))
        corrupt = broken and shard == 0 and i == 1
        no_caption = broken and shard == num_shards - 1 and i == per_shard - 2
        meta = {"key": key, "caption": None if no_caption else caption, "status": "success",
                "width": im.width, "height": im.height}
        _add(tar, f"{key}.jpg", _header_only(jpg) if corrupt else jpg)
        if not no_caption:
          _add(tar, f"{key}.txt", caption.encode("utf-8"))
        _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
        if corrupt:
          out["broken_keys"].append(key)
        elif no_caption:
          out["no_caption_keys"].append(key)
        else:
          out["captions"][key] = caption
    out["files"].append(path)
  out["num_valid"] = len(out["captions"])
  return out


def tar_without_captions(path, n=3):
  """A tar of n .jpg members and nothing else: an image-text reader should reject it."""
  rng = np.random.default_rng(3)
  with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
    for i in range(n):
      _add(tar, f"{i:09d}.jpg", _jpeg_bytes(_crop(rng, CLASSES[i % 3])[0]))
  return path


def captions_csv(out_dir, n=16, sep="\t", broken=True):
  """Writes out_dir/images/* and an open_clip-style out_dir/captions.tsv (.csv unless sep is a
  tab) with columns filepath, title. `broken`, `missing` and `captions` are keyed by the
  filepath as written in the CSV."""
  rng = np.random.default_rng(4)
  os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
  csv_path = os.path.join(out_dir, "captions.tsv" if sep == "\t" else "captions.csv")
  rows, out = [], {"csv": csv_path, "num_valid": n, "broken": [], "missing": [], "captions": {}}
  for i in range(n):
    cls = CLASSES[i % len(CLASSES)]
    im, area = _crop(rng, cls)
    rel = f"images/{i:05d}.jpg"
    with open(os.path.join(out_dir, rel), "wb") as f:
      f.write(_jpeg_bytes(im, int(rng.integers(70, 96))))
    # Two rows give absolute paths, which open_clip's CsvDataset also accepts.
    filepath = os.path.abspath(os.path.join(out_dir, rel)) if i in (1, n - 2) else rel
    rows.append((filepath, _caption(rng, cls, im, area)))
    out["captions"][filepath] = rows[-1][1]
  if broken:
    with open(os.path.join(out_dir, "images", "corrupt.jpg"), "wb") as f:
      f.write(_header_only(_jpeg_bytes(_crop(rng, CLASSES[0])[0])))
    rows.insert(n // 2, ("images/corrupt.jpg", "a photo of an astronaut, cropped"))
    rows.insert(n // 3, ("images/missing.jpg", "a cup of coffee, close up"))
    out["broken"], out["missing"] = ["images/corrupt.jpg"], ["images/missing.jpg"]
  with open(csv_path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter=sep, lineterminator="\n")
    writer.writerow(("filepath", "title"))
    writer.writerows(rows)
  return out


def jpeg(width, height, seed=0, quality=90):
  """A JPEG (bytes) of a random crop of one sample photo, of exactly width x height pixels."""
  rng = np.random.default_rng(seed)
  names = CLASSES + _EXTRA
  im, _ = _crop(rng, names[rng.integers(len(names))], size=(width, height))
  return _jpeg_bytes(im, quality)
