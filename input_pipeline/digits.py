"""The embedded default dataset: scikit-learn's bundled handwritten digits.

1797 real 8x8 grayscale images (values 0..16) of 10 classes ship inside
scikit-learn, so every recipe and test runs offline. The train/test split is
fixed (stratified, seed 0): 1437 train / 360 test.
"""

import functools

import numpy as np
from sklearn import datasets, model_selection

from input_pipeline import resize

NUM_CLASSES = 10
SPLITS = ("train", "test")
_TEST_FRACTION = 0.2
_SPLIT_SEED = 0


class ArraySource:
  """Random-access source over in-memory arrays: i -> dict(image, label)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": self.images[index], "label": self.labels[index]}


@functools.lru_cache(maxsize=None)
def split_index(split: str) -> np.ndarray:
  """Rows of `sklearn.datasets.load_digits()` in `split`, sorted (the file order)."""
  if split not in SPLITS:
    raise ValueError(f"Unknown digits split {split!r}; choose from {SPLITS}.")
  target = datasets.load_digits().target
  train_index, test_index = model_selection.train_test_split(
      np.arange(len(target)), test_size=_TEST_FRACTION, stratify=target,
      random_state=_SPLIT_SEED)
  index = np.sort(train_index if split == "train" else test_index)
  index.flags.writeable = False  # Shared through the cache.
  return index


@functools.lru_cache(maxsize=None)
def load(split: str, image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Returns uint8 images [N, S, S, 3] and int32 labels [N] of one split."""
  digits = datasets.load_digits()
  index = split_index(split)
  images = digits.images[index, :, :, None] * (255.0 / 16.0)
  images = np.stack([resize.resize(image, image_size, image_size)
                     for image in images])
  images = np.repeat(resize.to_uint8(images), 3, axis=-1)
  labels = digits.target[index].astype(np.int32)
  # Cached arrays are shared by every caller: make accidental writes fail.
  images.flags.writeable = labels.flags.writeable = False
  return images, labels


def source(split: str, image_size: int = 32) -> ArraySource:
  return ArraySource(*load(split, image_size))
