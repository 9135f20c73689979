"""Tests of input_pipeline: sources, resize, training and evaluation batches."""

import io

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets

from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import digits, resize, tfds_source


def index_source(num_examples):
  """Label = index, so batches show exactly which examples they hold."""
  images = np.arange(num_examples, dtype=np.uint8)[:, None, None, None]
  images = np.broadcast_to(images, (num_examples, 2, 2, 3))
  return digits.ArraySource(images, np.arange(num_examples, dtype=np.int32))


def data_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      name="digits", tfds_name="", data_dir=None, train_split="train",
      test_split="test", image_size=32, num_workers=0))
  cfg.update(overrides)
  return cfg


# Sources.


@pytest.mark.parametrize("shape", [(32, 32), (100, 20), (37, 53), (8, 80)])
def test_resize_matches_jax_antialiased_linear(shape):
  image = np.random.default_rng(0).uniform(0, 255, (37, 53, 3))
  expected = jax.image.resize(image, (*shape, 3), "linear", antialias=True)
  np.testing.assert_allclose(resize.resize(image, *shape), expected, atol=1e-3)


def test_center_square_resize_crops_centre_and_replicates_gray():
  image = np.zeros((6, 10, 1), np.uint8)
  image[:, 2:8] = 200  # The centred 6x6 square.
  out = resize.center_square_resize(image, 3)
  assert out.shape == (3, 3, 3) and out.dtype == np.uint8
  assert (out == 200).all()


def test_digits_split_is_a_fixed_stratified_partition():
  train_images, train_labels = digits.load("train", image_size=8)
  test_images, test_labels = digits.load("test", image_size=8)
  assert len(train_labels) == 1437 and len(test_labels) == 360
  assert np.bincount(test_labels).min() >= 35
  # At the native size the images are the originals rescaled: train + test
  # together hold every original example exactly once.
  full = datasets.load_digits()
  original = np.rint(full.images * 255 / 16).astype(np.uint8)
  def rows(images, labels):
    return sorted(image.tobytes() + bytes([label])
                  for image, label in zip(images, labels))
  assert rows(np.concatenate([train_images[..., 0], test_images[..., 0]]),
              np.concatenate([train_labels, test_labels])) == rows(
                  original, full.target)
  digits.load.cache_clear()  # The split does not depend on the cache.
  np.testing.assert_array_equal(digits.load("test", image_size=8)[0],
                                test_images)


def test_digits_source_dtypes_and_shapes():
  train, test, num_classes = sources.get_sources(data_config())
  assert (len(train), len(test), num_classes) == (1437, 360, 10)
  example = train[0]
  assert example["image"].shape == (32, 32, 3)
  assert example["image"].dtype == np.uint8
  assert example["label"].dtype == np.int32
  images = digits.load("train", 32)[0]
  assert images.min() == 0 and images.max() == 255
  assert (images[..., 0] == images[..., 2]).all()


def test_unknown_dataset_name_raises():
  with pytest.raises(ValueError, match=r"config\.data\.name.*digits.*tfds"):
    sources.get_sources(data_config(name="cifar"))


def test_tfds_source_with_mock_data():
  # mock_data's data_source returns generated, already decoded examples: it
  # checks the plumbing (names, splits, resize, dtypes) without any files.
  with tfds.testing.mock_data(num_examples=5):
    train, test, num_classes = sources.get_sources(data_config(
        name="tfds", tfds_name="mnist", image_size=16))
    example = test[4]
  assert (len(train), len(test), num_classes) == (5, 5, 10)
  assert example["image"].shape == (16, 16, 3)
  assert example["image"].dtype == np.uint8
  assert example["label"].dtype == np.int32


def _tiny_image(i):
  shape = (8 + 4 * i, 14, 1)  # Landscape, then portrait.
  return np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8)


def _png(image):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0]).save(buffer, format="PNG")
  return buffer.getvalue()


class TinyImages(tfds.core.GeneratorBasedBuilder):
  """Grayscale images of varying aspect ratio, stored raw or as PNG."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="raw"),
                     tfds.core.BuilderConfig(name="png")]

  def _info(self):
    if self.builder_config.name == "png":
      image = tfds.features.Image(shape=(None, None, 1), encoding_format="png")
    else:
      image = tfds.features.Tensor(
          shape=(None, None, 1), dtype=np.uint8, encoding="zlib")
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"image": image, "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(6),
            "test": self._generate_examples(2)}

  def _generate_examples(self, num_examples):
    encode = _png if self.builder_config.name == "png" else lambda x: x
    for i in range(num_examples):
      yield i, {"image": encode(_tiny_image(i)), "label": i % 3}


@pytest.mark.parametrize("config", ["raw", "png"])
def test_tfds_source_reads_array_record_files(config, tmp_path):
  if config == "png":  # Decoding tfds Image features needs Pillow or OpenCV.
    pytest.importorskip("PIL")
  # A local builder with nothing to download: preparing it writes the real
  # array_record layout in milliseconds and never touches the network.
  TinyImages(config=config, data_dir=tmp_path, file_format="array_record"
             ).download_and_prepare(download_config=tfds.download.DownloadConfig(
                 try_download_gcs=False))
  source = tfds_source.TfdsSource(
      f"tiny_images/{config}", "train", image_size=8, data_dir=tmp_path)
  assert (len(source), source.num_classes) == (6, 3)
  expected = {i % 3: [] for i in range(6)}
  for i in range(6):
    expected[i % 3].append(resize.center_square_resize(_tiny_image(i), 8))
  for example in (source[i] for i in range(6)):
    assert example["image"].shape == (8, 8, 3)
    assert example["label"].dtype == np.int32
    # Files are shuffled on write; match each record to its original.
    assert any(np.array_equal(example["image"], e)
               for e in expected[int(example["label"])])


# Training batches.


def labels(batches, steps):
  return np.stack([batches[s]["label"] for s in steps])


def test_train_batches_shapes_and_determinism():
  source = digits.source("train")
  batch = pipeline.train_batches(source, 16, seed=0)[3]
  assert batch["image"].shape == (16, 32, 32, 3)
  assert batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32
  a, b, c = (pipeline.train_batches(index_source(10), 4, seed)
             for seed in (0, 0, 1))
  np.testing.assert_array_equal(labels(a, range(8)), labels(b, range(8)))
  assert not np.array_equal(labels(a, range(8)), labels(c, range(8)))


def test_every_epoch_is_a_fresh_permutation():
  # Batches of 4 over 10 examples straddle epochs; nothing is dropped.
  batches = pipeline.train_batches(index_source(10), 4, seed=0)
  epochs = labels(batches, range(10)).reshape(4, 10)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(10))
  assert len({epoch.tobytes() for epoch in epochs}) == 4


@pytest.mark.parametrize("num_workers", [0, 1])
def test_iterate_resumes_exactly_at_any_step(num_workers):
  batches = pipeline.train_batches(
      index_source(10), 4, seed=0, num_workers=num_workers)
  iterator = batches.iterate(start_step=7)
  for step in range(7, 12):
    np.testing.assert_array_equal(next(iterator)["label"],
                                  batches[step]["label"])


@pytest.mark.parametrize("global_batch_size,process_count", [(4, 2), (6, 3)])
def test_process_slices_concatenate_to_the_global_batch(global_batch_size,
                                                        process_count):
  global_batches = pipeline.train_batches(
      index_source(10), global_batch_size, seed=3)
  local_batches = [
      pipeline.train_batches(index_source(10), global_batch_size, seed=3,
                                   process_index=p, process_count=process_count)
      for p in range(process_count)]
  for step in range(6):
    np.testing.assert_array_equal(
        np.concatenate([b[step]["label"] for b in local_batches]),
        global_batches[step]["label"])


def test_indivisible_batch_size_raises():
  with pytest.raises(ValueError, match=r"config\.batch_size=5.*process count 2"):
    pipeline.train_batches(index_source(10), 5, seed=0, process_count=2)
  with pytest.raises(ValueError, match=r"config\.batch_size"):
    pipeline.eval_batches(index_source(10), 5, process_count=2)


# Evaluation batches.


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_pass_covers_every_example_once_in_order(process_count):
  per_process = [list(pipeline.eval_batches(
      index_source(10), 4, process_index=p, process_count=process_count))
                 for p in range(process_count)]
  assert len({len(batches) for batches in per_process}) == 1
  steps = [{k: np.concatenate([b[k] for b in batches])
            for k in ("image", "label", "mask")}
           for batches in zip(*per_process)]
  mask = np.concatenate([s["mask"] for s in steps])
  np.testing.assert_array_equal(mask, np.arange(12) < 10)
  np.testing.assert_array_equal(
      np.concatenate([s["label"] for s in steps])[mask], np.arange(10))
  assert not np.concatenate([s["image"] for s in steps])[~mask].any()
