"""Data sources by name (`config.data.name`), with the kind of examples each yields.

A source opens (train, test, num_classes) from `config.data`. Its kind says what a method
can train on it: "image" examples hold an image and a label; "image-text" ones also hold
captions (and serve image methods too, which ignore them). A method declares the kind it
needs (methods/base.py), and the run refuses a mismatch before anything compiles.

  digits, digits_captions   the embedded 8×8 digits (with generated captions)
  tfds, tfds_captions       tensorflow-datasets array_record builds (data.tfds_name, data_dir)
  image_folder              an ImageFolder tree read in place: data.path/<split>/<class>/<image>
  prepared                  a directory written by tools/prepare_data.py (data.path), from an
                            ImageFolder, webdataset tars or a CSV; captions if it has them

The last two hold encoded images, decoded on the host at full resolution, where each
training view takes its own random-resized crop (input_pipeline/encoded.py).
"""
import dataclasses
import os
from typing import Callable

from big_contrast import registry
from big_contrast import settings
from input_pipeline import digits, encoded, image_text, records, tfds_source

IMAGES = "image"
IMAGE_TEXT = "image-text"

SOURCES = registry.Registry("data source", "config.data.name")

# `config.data`. tfds_* keys and data_dir serve the tfds sources, `path` image_folder and
# prepared; image_key, text_key and label_key name the features of tfds image-text records
# ("" label_key: no labels). image_size: the side evaluation images are brought to (short
# side resized, centre crop; the device then crops augment.crop_size from it).
SETTINGS = dict(
    name="digits", tfds_name="", data_dir="", path="", train_split="train", test_split="test",
    image_size=settings.integer(32, low=1), num_workers=settings.integer(0, low=0),
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    image_key="image", text_key="caption", label_key="")


@dataclasses.dataclass(frozen=True)
class DataSource:
  open: Callable          # data_cfg -> (train source, test source, num_classes)
  kinds: tuple            # what it can feed: (IMAGES,) or (IMAGES, IMAGE_TEXT)
  check: Callable | None = None   # (data_cfg, kind) -> error text or None; before any read
  # Batches hold views cropped on the host ("views", "small_views": [B, V, S, S, 3]) instead
  # of whole images ("image": [B, S, S, 3]) that the device crops.
  host_crops: bool = False
  # (data_cfg, split) -> that split alone, its class names its own; None: open's test source
  # with test_split=split.
  split: Callable | None = None


def _check_data_dir(cfg, kind):
  del kind
  if not cfg.get("tfds_name"):
    return (f"config.data.name={cfg.name!r} reads a tfds dataset: set config.data.tfds_name "
            "(e.g. imagenet2012) and config.data.data_dir.")
  data_dir = cfg.get("data_dir")
  # Required: tfds's own default (~/tensorflow_datasets) fails, when the build is not there,
  # with a KeyError that names neither key.
  if not data_dir:
    return (f"config.data.name={cfg.name!r} reads a tfds array_record build: set "
            "config.data.data_dir to the directory `tfds build NAME --file_format=array_record "
            "--data_dir=...` wrote (README, Your own data).")
  if not os.path.isdir(data_dir):
    return (f"config.data.data_dir={data_dir!r} does not exist; point it at the directory "
            "`tfds build --data_dir=...` prepared (README, Your own data).")
  return None


def _digits(cfg):
  return (digits.source("train", cfg.image_size), digits.source("test", cfg.image_size),
          digits.NUM_CLASSES)


def _tfds(cfg):
  train, test = (tfds_source.TfdsSource(cfg.tfds_name, split, cfg.image_size, cfg.data_dir)
                 for split in (cfg.train_split, cfg.test_split))
  return train, test, train.num_classes


def _image_text(cfg):
  train, test = image_text.get_image_text_sources(cfg)
  return train, test, train.num_classes


def _check_image_folder(cfg, kind):
  del kind
  if not cfg.get("path"):
    return ("config.data.name='image_folder' reads an ImageFolder tree: set config.data.path "
            "to the folder holding the split folders (<path>/train/<class>/<image>).")
  for key in ("train_split", "test_split"):
    split_dir = os.path.join(cfg.path, cfg[key])
    if not os.path.isdir(split_dir):
      found = sorted(os.listdir(cfg.path)) if os.path.isdir(cfg.path) else None
      return (f"config.data.{key}={cfg[key]!r}: {split_dir!r} is not a directory" +
              (f" ({cfg.path!r} holds {found[:8]})" if found is not None else
               f" ({cfg.path!r} does not exist)") + "; set config.data.path / " + key + ".")
  return None


def _check_prepared(cfg, kind):
  if not cfg.get("path"):
    return ("config.data.name='prepared' reads a directory written by tools.prepare_data: set "
            "config.data.path to it.")
  try:
    manifest = records.read_manifest(cfg.path)
    for key in ("train_split", "test_split"):
      records.split_shards(cfg.path, manifest, cfg[key])
  except records.DataError as e:
    return str(e)
  if kind == IMAGE_TEXT and not manifest["has_captions"]:
    return (f"config.data.path={cfg.path!r} was prepared from {manifest['source_format']} and "
            "holds no captions; the method trains on image-text pairs: prepare webdataset "
            "tars or a CSV of captions (tools.prepare_data --format=webdataset|csv).")
  return None


def _image_folder(cfg):
  train = encoded.FolderRecords(os.path.join(cfg.path, cfg.train_split))
  test = encoded.FolderRecords(os.path.join(cfg.path, cfg.test_split), train.class_names)
  train, test = (encoded.EncodedImages(r, cfg.image_size) for r in (train, test))
  return train, test, train.num_classes


def _prepared(cfg):
  manifest = records.read_manifest(cfg.path)
  train, test = (encoded.EncodedImages(encoded.PreparedRecords(cfg.path, cfg[key], manifest),
                                       cfg.image_size, with_captions=manifest["has_captions"])
                 for key in ("train_split", "test_split"))
  return train, test, train.num_classes


SOURCES.register("digits", DataSource(_digits, (IMAGES,)))
SOURCES.register("tfds", DataSource(_tfds, (IMAGES,), _check_data_dir))
SOURCES.register("digits_captions", DataSource(_image_text, (IMAGES, IMAGE_TEXT)))
SOURCES.register("tfds_captions", DataSource(_image_text, (IMAGES, IMAGE_TEXT), _check_data_dir))
SOURCES.register("image_folder", DataSource(
    _image_folder, (IMAGES,), _check_image_folder, host_crops=True,
    split=lambda cfg, split: encoded.EncodedImages(
        encoded.FolderRecords(os.path.join(cfg.path, split)), cfg.image_size)))
SOURCES.register("prepared", DataSource(
    _prepared, (IMAGES, IMAGE_TEXT), _check_prepared, host_crops=True,
    split=lambda cfg, split: encoded.EncodedImages(encoded.PreparedRecords(cfg.path, split),
                                                   cfg.image_size)))


def check(data_cfg, kind: str):
  """Fails on an unknown source, one that cannot feed `kind`, or a bad data_dir."""
  source = SOURCES.get(data_cfg.name)
  if kind not in source.kinds:
    able = [n for n, s in SOURCES.items() if kind in s.kinds]
    raise ValueError(f"config.data.name={data_cfg.name!r} has no captions; the method trains "
                     f"on image-text pairs: use one of {able}.")
  problem = source.check(data_cfg, kind) if source.check else None
  if problem:
    raise ValueError(problem)


def get_sources(data_cfg):
  """(train source, test source, num_classes) of `config.data`."""
  return SOURCES.get(data_cfg.name).open(data_cfg)


def open_split(data_cfg, split: str):
  """One split of a labelled image dataset described like `config.data` (name, path or
  tfds_name and data_dir, image_size), as an evaluation source; its class names are its own
  (an ImageFolder's sorted folders, a prepared manifest's, tfds's label names)."""
  source = SOURCES.get(data_cfg.name)
  if source.split is not None:
    return source.split(data_cfg, split)
  cfg = data_cfg.copy_and_resolve_references()
  cfg.test_split = split
  check(cfg, IMAGES)
  return get_sources(cfg)[1]
