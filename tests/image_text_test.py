"""Tests of input_pipeline.image_text: captioned digits and tfds image-text."""

import io
import re

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets

from input_pipeline import digits, image_text, resize
from conftest import tiny_config
from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import tokenizers


def data_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      name="digits_captions", tfds_name="", data_dir=None, train_split="train",
      test_split="test", image_size=32, image_key="image", text_key="caption",
      label_key=None))
  cfg.update(overrides)
  return cfg


@pytest.fixture(name="digit_sources", scope="module")
def digit_sources_fixture():
  return image_text.get_image_text_sources(data_config(image_size=16))


# Captioned digits.


def test_digits_captions_shapes_and_dtypes(digit_sources):
  train, test = digit_sources
  assert (len(train), len(test)) == (1437, 360)
  assert train.num_classes == test.num_classes == 10
  assert train.class_names == ("zero", "one", "two", "three", "four", "five",
                               "six", "seven", "eight", "nine")
  for example in (train[0], test[359]):
    assert example["image"].shape == (16, 16, 3)
    assert example["image"].dtype == np.uint8
    assert example["label"].dtype == np.int32
    assert isinstance(example["captions"], tuple)
    assert all(isinstance(c, str) and c for c in example["captions"])
  np.testing.assert_array_equal(train.images, digits.load("train", 16)[0])


def test_captions_describe_the_original_rows_of_each_split():
  # The attributes are measured on the rows digits.split_index() names: they must
  # be exactly the images digits.load returns (at the native size, rescaled).
  full = datasets.load_digits()
  for split in digits.SPLITS:
    index = digits.split_index(split)
    images, labels = digits.load(split, image_size=8)
    np.testing.assert_array_equal(
        images[..., 0], np.rint(full.images[index] * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(labels, full.target[index])


def test_train_has_every_template_and_test_exactly_one(digit_sources):
  train, test = digit_sources
  assert all(len(train[i]["captions"]) == len(image_text.TEMPLATES)
             for i in range(len(train)))
  assert all(len(test[i]["captions"]) == 1 for i in range(len(test)))
  assert 8 <= len(image_text.TEMPLATES) <= 12


def test_captions_name_their_label_and_no_other_class(digit_sources):
  class_words = {**{n: i for i, n in enumerate(image_text.CLASS_NAMES)},
                 **{str(i): i for i in range(10)}}
  for source in digit_sources:
    for i in range(len(source)):
      example = source[i]
      for caption in example["captions"]:
        mentioned = {class_words[t] for t in re.findall(r"[a-z]+|\d", caption)
                     if t in class_words}
        assert mentioned == {int(example["label"])}, caption


def test_train_captions_mix_words_and_numerals(digit_sources):
  captions = digit_sources[0][0]["captions"]
  label = int(digit_sources[0][0]["label"])
  assert any(image_text.CLASS_NAMES[label] in c for c in captions)
  assert any(re.search(rf"\b{label}\b", c) for c in captions)


def test_test_captions_are_a_varied_fixed_benchmark(digit_sources):
  test = digit_sources[1]
  attributes = image_text.digit_attributes("test")
  captions = [test[i]["captions"][0] for i in range(len(test))]
  for i, caption in enumerate(captions):
    # Every test caption states all three attributes of its own image.
    for name in ("weight", "slant", "width"):
      assert attributes[name][i] in caption, (name, caption)
  assert len(set(captions)) > 50
  # Deterministic: rebuilt from scratch, the benchmark is the same.
  image_text.digit_captions.cache_clear()
  image_text.digit_features.cache_clear()
  image_text.attribute_thresholds.cache_clear()
  rebuilt = image_text.DigitsCaptions("test", image_size=8)
  assert [rebuilt[i]["captions"][0] for i in range(len(rebuilt))] == captions


def test_attributes_vary_across_images():
  for split in digits.SPLITS:
    attributes = image_text.digit_attributes(split)
    assert set(attributes["weight"]) == set(image_text.WEIGHTS)
    assert set(attributes["slant"]) == set(image_text.SLANTS)
    assert set(attributes["width"]) == set(image_text.WIDTHS)
  # Within a class too, so captions distinguish images of one digit.
  labels = digits.load("test", 8)[1]
  attributes = image_text.digit_attributes("test")
  combos = {(attributes["weight"][i], attributes["slant"][i],
             attributes["width"][i]) for i in np.flatnonzero(labels == 3)}
  assert len(combos) >= 4


def test_thresholds_come_from_the_train_split_only():
  thresholds = image_text.attribute_thresholds()
  train, test = (image_text.digit_features(s) for s in digits.SPLITS)
  np.testing.assert_allclose(
      thresholds["weight"], np.quantile(train["weight"], [1 / 3, 2 / 3]))
  np.testing.assert_allclose(
      thresholds["slant"], np.quantile(train["slant"], [1 / 3, 2 / 3]))
  np.testing.assert_allclose(thresholds["width"],
                             [np.median(train["width"])])
  assert not np.allclose(thresholds["slant"],
                         np.quantile(test["slant"], [1 / 3, 2 / 3]))
  # Terciles (halves for width) of the train split are balanced.
  attributes = image_text.digit_attributes("train")
  for name, words in (("weight", image_text.WEIGHTS),
                      ("slant", image_text.SLANTS),
                      ("width", image_text.WIDTHS)):
    counts = np.array([attributes[name].count(w) for w in words])
    np.testing.assert_allclose(counts / 1437, 1 / len(words), atol=0.02)


def test_measure_on_synthetic_strokes():
  # A '/' stroke (top to the right) leans right by one pixel per row; its
  # mirror leans left; a vertical bar is upright and has no width.
  forward = np.fliplr(np.eye(8))
  bar = np.zeros((8, 8))
  bar[:, 3] = 16
  features = image_text.measure(np.stack([forward * 16, np.eye(8) * 8, bar]))
  np.testing.assert_allclose(features["slant"], [1, -1, 0], atol=1e-12)
  np.testing.assert_allclose(features["weight"], [128, 64, 128])
  assert features["width"][2] == 0 < features["width"][0]
  # On real data: most 7s lean right, most 6s lean left.
  labels = digits.load("train", 8)[1]
  slants = np.array(image_text.digit_attributes("train")["slant"])
  assert np.mean(slants[labels == 7] == "leaning right") > 0.8
  assert np.mean(slants[labels == 6] == "leaning left") > 0.8


def test_prompt_templates_format_with_class_names():
  prompts = image_text.prompt_templates()
  assert len(prompts) >= 3
  assert all(p.format("seven").count("seven") == 1 for p in prompts)


def test_unknown_digits_split_raises():
  with pytest.raises(ValueError, match="digits split"):
    image_text.DigitsCaptions("validation")


def test_unknown_dataset_name_raises():
  with pytest.raises(ValueError,
                     match=r"config\.data\.name='coco'.*digits_captions.*tfds"):
    image_text.get_image_text_sources(data_config(name="coco"))


# tfds image-text datasets (array_record, built locally, no network).

_NAMES = ("cat", "dog", "bird")


def _image(i):
  shape = (6 + 3 * i, 10, 3)  # Landscape, square, then portrait.
  return np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8)


def _png(image):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _expected(i):
  captions = tuple(f"photo {i}, caption {j} \u00e9" for j in range(1 + i % 3))
  return dict(image=_image(i), caption=f"example {i}: caf\u00e9",
              captions=captions, label=i % 3)


class TinyCaptions(tfds.core.GeneratorBasedBuilder):
  """PNG images with one caption, several, and COCO-like nested captions."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3),
                                     encoding_format="png"),
        "caption": tfds.features.Text(),
        "captions": tfds.features.Sequence(tfds.features.Text()),
        "annotations": tfds.features.Sequence(
            {"id": np.int64, "text": tfds.features.Text()}),
        "label": tfds.features.ClassLabel(names=_NAMES),
        "number": np.int64,
    })
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(5)),
            "test": self._generate_examples(range(5, 7))}

  def _generate_examples(self, indices):
    for i in indices:
      e = _expected(i)
      yield i, {"image": _png(e["image"]), "caption": e["caption"],
                "captions": list(e["captions"]),
                "annotations": [{"id": j, "text": t}
                                for j, t in enumerate(e["captions"])],
                "label": e["label"], "number": i}


@pytest.fixture(name="tfds_dir", scope="module")
def tfds_dir_fixture(tmp_path_factory):
  pytest.importorskip("PIL")  # Decoding tfds Image features needs Pillow.
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = TinyCaptions(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


def _by_original_index(source):
  """{original index: example}; files are shuffled on write."""
  examples = {}
  for example in (source[i] for i in range(len(source))):
    index = int(re.search(r"\d+", example["captions"][0]).group())
    examples[index] = example
  return examples


def test_tfds_single_caption_round_trip(tfds_dir):
  source = image_text.TfdsImageTextSource(
      "tiny_captions", "train", image_size=8, data_dir=tfds_dir)
  assert (len(source), source.num_classes, source.class_names) == (5, 0, ())
  examples = _by_original_index(source)
  assert sorted(examples) == list(range(5))
  for i, example in examples.items():
    expected = _expected(i)
    assert example["captions"] == (expected["caption"],)
    assert example["label"] == -1 and example["label"].dtype == np.int32
    assert example["image"].dtype == np.uint8
    np.testing.assert_array_equal(
        example["image"], resize.center_square_resize(expected["image"], 8))


@pytest.mark.parametrize("text_key", ["captions", "annotations/text"])
def test_tfds_multiple_captions_and_labels_round_trip(tfds_dir, text_key):
  source = image_text.TfdsImageTextSource(
      "tiny_captions", "test", image_size=4, data_dir=tfds_dir,
      text_key=text_key, label_key="label")
  assert (len(source), source.num_classes, source.class_names) == (2, 3, _NAMES)
  examples = _by_original_index(source)
  assert sorted(examples) == [5, 6]
  for i, example in examples.items():
    expected = _expected(i)
    assert example["captions"] == expected["captions"]
    assert len(example["captions"]) == 1 + i % 3
    assert example["label"] == expected["label"]
    assert example["label"].dtype == np.int32
    np.testing.assert_array_equal(
        example["image"], resize.center_square_resize(expected["image"], 4))


def test_factory_builds_tfds_sources(tfds_dir):
  train, test = image_text.get_image_text_sources(data_config(
      name="tfds_captions", tfds_name="tiny_captions", data_dir=str(tfds_dir),
      image_size=8, text_key="captions", label_key="label"))
  assert (len(train), len(test), train.num_classes) == (5, 2, 3)
  assert test[0]["image"].shape == (8, 8, 3)


@pytest.mark.parametrize("config_key", ["image_key", "text_key", "label_key"])
def test_missing_feature_names_the_config_key(tfds_dir, config_key):
  with pytest.raises(
      ValueError,
      match=rf"config\.data\.{config_key}='nope' is not a feature of "
            r"tiny_captions; available: \[.*'caption'.*'annotations/text'"):
    image_text.TfdsImageTextSource(
        "tiny_captions", "train", 8, data_dir=tfds_dir, **{config_key: "nope"})


def test_label_key_must_be_a_class_label(tfds_dir):
  with pytest.raises(
      ValueError, match=r"config\.data\.label_key='number'.*not a ClassLabel"):
    image_text.TfdsImageTextSource(
        "tiny_captions", "train", 8, data_dir=tfds_dir, label_key="number")


# Data: captions are tokenized on the host, one random caption per example per epoch.

def test_train_batches_carry_tokens_of_a_caption_that_changes_across_epochs():
  c = tiny_config("clip_digits", **{"text.tokenizer.length": 64})
  tok = tokenizers.get_tokenizer(c.text.tokenizer)
  train_src, _, _ = sources.get_sources(c.data)
  batches = pipeline.train_batches(train_src, 16, seed=0, tokenizer=tok)
  b0 = batches[0]
  assert b0["text"].shape == (16, 64) and b0["text"].dtype == np.int32
  assert "captions" not in b0
  np.testing.assert_array_equal(batches[0]["text"], b0["text"])   # deterministic, resumable
  # Captions are drawn from each image's templates: many distinct texts over a few batches.
  texts = {tok.decode(t) for s in range(0, 400, 16) for t in batches[s]["text"]}
  assert len(texts) > 200


class _Damaged:
  """tfds records where index 1 cannot be read (a torn record, an image that does not decode)
  and index 3 has no caption."""

  def __init__(self, records_):
    self.records = records_

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    if index == 1:
      raise RuntimeError("chunk data hash mismatch")
    record = self.records[index]
    return {**record, "captions": []} if index == 3 else record


class _Broken(_Damaged):
  def __getitem__(self, index):
    raise ZeroDivisionError("division by zero")


def test_tfds_records_that_cannot_be_used_are_replaced_and_counted(tfds_dir):
  from input_pipeline import records, tfds_source
  for source in (image_text.TfdsImageTextSource("tiny_captions", "train", 8, data_dir=tfds_dir,
                                                text_key="captions"),
                 tfds_source.TfdsSource("tiny_captions", "train", 8, data_dir=tfds_dir)):
    intact = [source[i] for i in range(5)]
    source._records = _Damaged(source._records)  # pylint: disable=protected-access
    examples = [source[i] for i in range(5)]
    bad = {1, 3} if "captions" in intact[0] else {1}
    assert [bool(e.pop(records.REPLACED)) for e in examples] == [i in bad for i in range(5)]
    for i, example in enumerate(examples):
      np.testing.assert_array_equal(example["image"], intact[i + 1 if i in bad else i]["image"])
    assert [s["path"] for s in source._replacer.skipped] == [  # pylint: disable=protected-access
        f"tiny_captions train[{i}]" for i in sorted(bad)]
  # Nothing usable at all: the last record and its reason, and the fix for this source.
  source._records = _Broken([None] * 5)  # pylint: disable=protected-access
  with pytest.raises(records.DataError, match=r"records in a row from 2 cannot be used, the last "
                     r"'tiny_captions train\[\d\]': ZeroDivisionError.*build tiny_captions again"):
    source[2]  # pylint: disable=pointless-statement
