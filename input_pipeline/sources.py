"""Data sources by name (`config.data.name`), with the kind of examples each yields.

A source opens (train, test, num_classes) from `config.data`. Its kind says what a method
can train on it: "image" examples hold an image and a label; "image-text" ones also hold
captions (and serve image methods too, which ignore them). A method declares the kind it
needs (methods/base.py), and the run refuses a mismatch before anything compiles.
"""
import dataclasses
import os
from typing import Callable

from big_contrast import registry
from big_contrast import settings
from input_pipeline import digits, image_text, tfds_source

IMAGES = "image"
IMAGE_TEXT = "image-text"

SOURCES = registry.Registry("data source", "config.data.name")

# `config.data`. tfds_* keys, data_dir and the splits serve the tfds sources; image_key,
# text_key and label_key name the features of image-text records ("" label_key: no labels).
SETTINGS = dict(
    name="digits", tfds_name="", data_dir="", train_split="train", test_split="test",
    image_size=settings.integer(32, low=1), num_workers=settings.integer(0, low=0),
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    image_key="image", text_key="caption", label_key="")


@dataclasses.dataclass(frozen=True)
class DataSource:
  open: Callable          # data_cfg -> (train source, test source, num_classes)
  kinds: tuple            # what it can feed: (IMAGES,) or (IMAGES, IMAGE_TEXT)
  check: Callable | None = None   # data_cfg -> error text or None; before anything is read


def _check_data_dir(cfg):
  if not cfg.get("tfds_name"):
    return (f"config.data.name={cfg.name!r} reads a tfds dataset: set config.data.tfds_name "
            "(e.g. imagenet2012) and config.data.data_dir.")
  data_dir = cfg.get("data_dir")
  if data_dir and not os.path.isdir(data_dir):
    return (f"config.data.data_dir={data_dir!r} does not exist; point it at the directory "
            "`tfds build --data_dir=...` prepared (README, Data).")
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


SOURCES.register("digits", DataSource(_digits, (IMAGES,)))
SOURCES.register("tfds", DataSource(_tfds, (IMAGES,), _check_data_dir))
SOURCES.register("digits_captions", DataSource(_image_text, (IMAGES, IMAGE_TEXT)))
SOURCES.register("tfds_captions", DataSource(_image_text, (IMAGES, IMAGE_TEXT), _check_data_dir))


def check(data_cfg, kind: str):
  """Fails on an unknown source, one that cannot feed `kind`, or a bad data_dir."""
  source = SOURCES.get(data_cfg.name)
  if kind not in source.kinds:
    able = [n for n, s in SOURCES.items() if kind in s.kinds]
    raise ValueError(f"config.data.name={data_cfg.name!r} has no captions; the method trains "
                     f"on image-text pairs: use one of {able}.")
  problem = source.check(data_cfg) if source.check else None
  if problem:
    raise ValueError(problem)


def get_sources(data_cfg):
  """(train source, test source, num_classes) of `config.data`."""
  return SOURCES.get(data_cfg.name).open(data_cfg)
