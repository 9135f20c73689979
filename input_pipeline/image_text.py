"""Image-text sources for contrastive image-text training and evaluation.

Every source gives random access (len() and [i]) to

  {"image": uint8 [S, S, 3], "label": int32 class id (-1 if none),
   "captions": tuple[str, ...] (at least one)}

and exposes `num_classes` (0 if none) and `class_names` (empty if none) for
zero-shot classification. The training pipeline samples one caption per
example per epoch; evaluation uses captions[0].

`DigitsCaptions` is the embedded default: the scikit-learn digits of
`input_pipeline.digits` with generated captions. Captions describe the image
itself, not only its class, so that image<->text retrieval is meaningful.
Three attributes are measured on the ORIGINAL 8x8 image (values 0..16), with
x to the right and y downwards, and named by thresholds computed on the train
split only, then applied to both splits (values for the fixed split):

  * weight: total ink, the sum of the 64 pixel values. Train terciles
    (296 and 329) -> "thin" / "medium" / "bold".
  * slant: the intensity-weighted regression slope of x on y,
    -cov(x, y) / var(y), i.e. the horizontal shift per row going up (tangent
    of the lean from vertical). Train terciles (about -0.09 and 0.01) ->
    "leaning left" / "upright" / "leaning right".
  * width: the intensity-weighted standard deviation of x in pixels, i.e.
    the horizontal extent of the ink (every digit fills the full height, so
    width is the extent that varies). Train median (about 1.26) ->
    "narrow" / "wide".

A value equal to a threshold falls in the upper bin. Global thresholds keep
the words absolute, so some correlate with the class (most 7s lean right and
most 6s lean left; most 0s are wide) while still varying within every class.

Train captions are all `TEMPLATES` rendered for the image (class-only ones
included); each test caption is the single attribute template (i * 7) % 8 of
its index i, so the test split is a fixed image-caption retrieval benchmark.

`TfdsImageTextSource` reads image-text datasets prepared by
tensorflow-datasets as array_record files (see `tfds_source`).
"""

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from sklearn import datasets

from input_pipeline import digits, records, resize

DATASETS = ("digits_captions", "tfds_captions")  # Registered in input_pipeline/sources.py.
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven",
               "eight", "nine")
WEIGHTS = ("thin", "medium", "bold")
SLANTS = ("leaning left", "upright", "leaning right")
WIDTHS = ("narrow", "wide")
_WORDS = {"weight": WEIGHTS, "slant": SLANTS, "width": WIDTHS}

# Fields: name (class word), digit (numeral), weight, slant, width.
CLASS_TEMPLATES = (
    "a photo of the number {name}.",
    "handwritten {digit}.",
)
ATTRIBUTE_TEMPLATES = (
    "a {weight}, {width} {name}, {slant}.",
    "the digit {digit} written in {weight} strokes, {width} and {slant}.",
    "a {width} handwritten {name} {slant}, drawn with {weight} strokes.",
    "a {weight} {digit}, {slant} and {width}.",
    "{slant}, {width} and {weight}: the number {digit}.",
    "a scanned {digit} with a {weight} stroke, {width}, {slant}.",
    "a {width} number {name} with {weight} strokes, {slant}.",
    "handwritten {name} ({digit}): {weight}, {width}, {slant}.",
)
TEMPLATES = CLASS_TEMPLATES + ATTRIBUTE_TEMPLATES
# Coprime with len(ATTRIBUTE_TEMPLATES): consecutive test images cycle
# through every template instead of neighbours sharing one.
_TEST_TEMPLATE_STRIDE = 7


def prompt_templates() -> tuple[str, ...]:
  """Default zero-shot prompts for digits, formatted with a class name."""
  return ("a photo of the number {}.", "handwritten {}.", "the digit {}.",
          "a handwritten {}.", "the number {}, handwritten.")


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
  """Raw attribute values [N] of grayscale images [N, H, W]; see module doc."""
  images = np.asarray(images, np.float64)
  y, x = np.mgrid[0:images.shape[1], 0:images.shape[2]].astype(np.float64)
  ink = images.sum(axis=(1, 2))
  def mean(values):  # Intensity-weighted mean over each image.
    return (images * values).sum(axis=(1, 2)) / ink
  dx = x - mean(x)[:, None, None]
  dy = y - mean(y)[:, None, None]
  return {"weight": ink,
          "slant": -mean(dx * dy) / mean(dy * dy),
          "width": np.sqrt(mean(dx * dx))}


@functools.lru_cache(maxsize=None)
def digit_features(split: str) -> dict[str, np.ndarray]:
  """Raw attribute values [N] of a split, measured on the original 8x8."""
  features = measure(datasets.load_digits().images[digits.split_index(split)])
  for value in features.values():
    value.flags.writeable = False  # Shared through the cache.
  return features


@functools.lru_cache(maxsize=None)
def attribute_thresholds() -> dict[str, tuple[float, ...]]:
  """Bin edges of each attribute: quantiles of the train split only."""
  train = digit_features("train")
  return {name: tuple(float(q) for q in np.quantile(
              train[name], np.arange(1, len(words)) / len(words)))
          for name, words in _WORDS.items()}


def digit_attributes(split: str) -> dict[str, tuple[str, ...]]:
  """Attribute words of every image of a split, e.g. weight -> ("thin", ...)."""
  features, thresholds = digit_features(split), attribute_thresholds()
  return {name: tuple(words[b] for b in np.digitize(features[name],
                                                    thresholds[name]))
          for name, words in _WORDS.items()}


@functools.lru_cache(maxsize=None)
def digit_captions(split: str) -> tuple[tuple[str, ...], ...]:
  """Captions of every image of a split: all templates (train) or one (test)."""
  labels = datasets.load_digits().target[digits.split_index(split)]
  attributes = digit_attributes(split)
  captions = []
  for i, label in enumerate(labels):
    fields = dict(name=CLASS_NAMES[label], digit=str(label),
                  **{name: words[i] for name, words in attributes.items()})
    if split == "train":
      templates = TEMPLATES
    else:
      templates = (ATTRIBUTE_TEMPLATES[
          (i * _TEST_TEMPLATE_STRIDE) % len(ATTRIBUTE_TEMPLATES)],)
    captions.append(tuple(t.format(**fields) for t in templates))
  return tuple(captions)


class DigitsCaptions:
  """The embedded digits with generated captions; see the module docstring."""

  num_classes = digits.NUM_CLASSES
  class_names = CLASS_NAMES

  def __init__(self, split: str, image_size: int = 32):
    self.images, self.labels = digits.load(split, image_size)
    self.captions = digit_captions(split)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self.images[index], "label": self.labels[index],
            "captions": self.captions[index]}


def _feature_paths(feature: Any, prefix: str = "") -> Iterator[str]:
  """'a', 'b/c', ...: every feature path, through Sequences of dicts."""
  while isinstance(feature, tfds.features.Sequence):
    feature = feature.feature
  if not isinstance(feature, tfds.features.FeaturesDict):
    yield prefix
    return
  for key, child in feature.items():
    yield from _feature_paths(child, f"{prefix}/{key}" if prefix else key)


def _find_feature(features: tfds.features.FeaturesDict, path: str,
                  config_key: str, name: str) -> Any:
  """The feature at a path such as COCO's 'captions/text', or raises."""
  feature = features
  for part in path.split("/"):
    while isinstance(feature, tfds.features.Sequence):
      feature = feature.feature
    if not (isinstance(feature, tfds.features.FeaturesDict)
            and part in feature.keys()):
      raise ValueError(
          f"config.data.{config_key}={path!r} is not a feature of {name}; "
          f"available: {list(_feature_paths(features))}")
    feature = feature[part]
  return feature


def _get(record: dict[str, Any], path: str) -> Any:
  # A Sequence of dicts decodes to a dict of lists, so keys nest the same way.
  for part in path.split("/"):
    record = record[part]
  return record


def _texts(value: Any) -> Iterator[str]:
  """Flattens a string, or a list/array of strings, to str in order."""
  if isinstance(value, bytes):
    yield value.decode("utf-8")
  elif isinstance(value, str):
    yield value
  elif isinstance(value, np.ndarray) and value.ndim == 0:
    yield from _texts(value.item())
  elif isinstance(value, (Sequence, np.ndarray)):
    for item in value:
      yield from _texts(item)
  else:
    raise TypeError(f"Expected text, got {type(value).__name__}: {value!r}")


class TfdsImageTextSource:
  """Random-access source over a tfds image-text dataset (array_record files).

  i -> dict(image=uint8 [S, S, 3], label=int32 (-1 without label_key),
  captions=tuple of every caption of the example). `text_key` may name a
  string (one caption) or a sequence of strings (several, as in COCO);
  nested features are named with '/', e.g. 'captions/text'.
  """

  def __init__(self, name: str, split: str, image_size: int,
               data_dir: str | None = None, image_key: str = "image",
               text_key: str = "caption", label_key: str | None = None):
    # download=False: a missing dataset fails at once instead of trying
    # (and, offline, hanging on) a download.
    self._records = tfds.data_source(
        name, split=split, data_dir=data_dir, download=False)
    features = self._records.dataset_info.features
    _find_feature(features, image_key, "image_key", name)
    _find_feature(features, text_key, "text_key", name)
    self.num_classes, self.class_names = 0, ()
    if label_key:
      label = _find_feature(features, label_key, "label_key", name)
      if not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(
            f"config.data.label_key={label_key!r} of {name} is a "
            f"{type(label).__name__}, not a ClassLabel.")
      self.num_classes, self.class_names = label.num_classes, tuple(label.names)
    self.name, self.split, self.image_size = name, split, image_size
    self.image_key, self.text_key, self.label_key = (
        image_key, text_key, label_key)
    self._replacer = records.Replacer(
        len(self._records), fix=f"check config.data.image_key / text_key against {name}'s "
        "features, or build it again with tfds build")

  def __len__(self) -> int:
    return len(self._records)

  def _example(self, index: int) -> dict[str, Any]:
    key = f"{self.name} {self.split}[{index}]"
    with records.bad_record(key):
      record = self._records[index]
      captions = tuple(_texts(_get(record, self.text_key)))
      if not captions:  # The pipeline needs one to sample.
        raise records.BadRecord(key, f"no caption under config.data.text_key="
                                f"{self.text_key!r}")
      label = _get(record, self.label_key) if self.label_key else -1
      return {
          "image": resize.center_square_resize(
              _get(record, self.image_key), self.image_size),
          "label": np.int32(label),
          "captions": captions,
      }

  def __getitem__(self, index: int) -> dict[str, Any]:
    """The example, or the next usable one for a record that cannot be read, decoded or has
    no caption (records.Replacer)."""
    example, replaced = self._replacer.first_usable(index, self._example)
    return {**example, records.REPLACED: np.str_(replaced)}


def get_image_text_sources(data_cfg: ml_collections.ConfigDict) -> tuple[
    DigitsCaptions | TfdsImageTextSource, DigitsCaptions | TfdsImageTextSource]:
  """Returns (train_source, test_source) named by `data_cfg.name`.

  'digits_captions' is the embedded default (uses only `image_size`);
  'tfds_captions' reads `tfds_name` splits `train_split`/`test_split` prepared in `data_dir`,
  with features `image_key`, `text_key` and optional `label_key`.
  """
  if data_cfg.name == "digits_captions":
    return (DigitsCaptions("train", data_cfg.image_size),
            DigitsCaptions("test", data_cfg.image_size))
  if data_cfg.name == "tfds_captions":
    train, test = (
        TfdsImageTextSource(
            data_cfg.tfds_name, split, data_cfg.image_size,
            data_dir=data_cfg.get("data_dir"),
            image_key=data_cfg.get("image_key", "image"),
            text_key=data_cfg.get("text_key", "caption"),
            label_key=data_cfg.get("label_key") or None)
        for split in (data_cfg.train_split, data_cfg.test_split))
    return train, test
  raise ValueError(f"Unknown config.data.name={data_cfg.name!r}; "
                   f"choose one of {DATASETS}.")
