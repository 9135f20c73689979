"""The prepared-data format and the readers of the formats users hold.

A prepared directory (tools/prepare_data.py writes it) holds, per split, array_record shards
`<split>-00000-of-00008.array_record` whose records are msgpack maps

  {"image": the ENCODED image bytes as found (JPEG, PNG, ...), "label": int (-1: none),
   "captions": [str, ...] (possibly empty), "key": str (where the record came from)}

and `manifest.json`: format name and version, the source format, class names, whether the
records carry captions, and per split the example count, shards, counts per class and every
skipped input with its path and reason. grain's ArrayRecordDataSource reads the shards with
random access and no TensorFlow.

The readers here list what a user's ImageFolder tree, webdataset tars and CSV files hold;
they fail with a DataError naming the path and the fix. A record that cannot be used once
training reads it (a torn shard, an image that does not decode, an example without a
caption) raises BadRecord, and a Replacer stands the next usable record in for it.
"""
import contextlib
import csv
import json
import os
import tarfile
from typing import Callable, Iterator, Sequence

from absl import logging
import msgpack
import numpy as np

FORMAT = "big_contrast.prepared"
VERSION = 1
MANIFEST = "manifest.json"
SOURCE_FORMATS = ("image_folder", "webdataset", "csv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ValueError):
  """A dataset on disk is missing or not what the reader expects; the message says the fix."""


class BadRecord(ValueError):
  """One record cannot be used (unreadable, undecodable, no caption); `key` names it."""

  def __init__(self, key: str, reason: str):
    super().__init__(reason)
    self.key = key


@contextlib.contextmanager
def bad_record(key: str):
  """Whatever reading and decoding one record raises becomes BadRecord(key): a torn
  array_record chunk, msgpack's and the image decoders' errors have many types."""
  try:
    yield
  except BadRecord:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise BadRecord(key, f"{type(e).__name__}: {e}") from None


# Each example a replacing source gives carries this field: "" or, where it stands in for
# unusable records, a line "'key' (reason)" for each of them. Whoever reads the batches pops
# it, counts and logs it (`count_replaced`): the worker processes that decode them write to
# no run's log.
REPLACED = "replaced"
# How far to look for a usable replacement before declaring the data broken.
MAX_REPLACEMENTS = 64


class Replacer:
  """Stands the next usable record in for each unusable one, so that shapes and batch sizes
  hold. Each bad record is listed once in `skipped` (pre-filled with what preparation
  skipped) and named in the REPLACED note of every example that stands in for it."""

  def __init__(self, size: int, skipped: Sequence[dict] = (),
               fix: str = "prepare it again with tools.prepare_data"):
    self.size = size
    self.skipped = list(skipped)
    self._reasons = {s["path"]: s["reason"] for s in self.skipped}
    self._fix = fix  # What to do when the data is broken beyond replacing.

  def first_usable(self, index: int, read: Callable[[int], object]) -> tuple[object, str]:
    """(read(j), note) for the first j of index, index + 1, ... (cyclically) whose read does
    not raise BadRecord; the note names the records passed over ("" if none)."""
    passed = []
    for offset in range(MAX_REPLACEMENTS):
      try:
        return read((index + offset) % self.size), "\n".join(passed)
      except BadRecord as e:
        last = e
        if e.key not in self._reasons:
          self._reasons[e.key] = " ".join(str(e).split())
          self.skipped.append({"path": e.key, "reason": self._reasons[e.key]})
        passed.append(f"{e.key!r} ({self._reasons[e.key]})")
    raise DataError(f"{MAX_REPLACEMENTS} records in a row from {index} cannot be used, the "
                    f"last {last.key!r}: {last}. The data is broken, or the config does not "
                    f"match it: {self._fix}.")


def count_replaced(notes, logged: set) -> int:
  """How many examples of a batch's REPLACED field (`notes`) stood in for unusable records.
  Each record not in `logged` yet is logged with its key and reason, and added to it."""
  count = 0
  for note in np.ravel(notes):
    if not note:
      continue
    count += 1
    for record in str(note).split("\n"):
      if record not in logged:
        logged.add(record)
        logging.warning("Record %s cannot be used: the next usable one stands in for it (%d "
                        "such records so far).", record, len(logged))
  return count


def encode_record(image: bytes, label: int = -1, captions: Sequence[str] = (),
                  key: str = "") -> bytes:
  return msgpack.packb({"image": bytes(image), "label": int(label),
                        "captions": list(captions), "key": key}, use_bin_type=True)


def decode_record(data: bytes) -> dict:
  record = msgpack.unpackb(data, raw=False)
  record["captions"] = tuple(record["captions"])
  return record


def is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_folder(split_dir: str, class_names: Sequence[str] | None = None):
  """(paths, labels, class_names) of an ImageFolder split `split_dir/<class>/<image>`.

  Labels are indices into the sorted class-folder names (torchvision's ImageFolder rule);
  paths are sorted by class, then file name. Given `class_names` (the train split's), this
  split's classes must be among them and keep their labels. Files whose extension is not an
  image's are ignored.
  """
  if not os.path.isdir(split_dir):
    raise DataError(f"{split_dir!r} is not a directory: an ImageFolder split holds one "
                    "folder per class (<split>/<class>/<image>).")
  with os.scandir(split_dir) as entries:
    classes = sorted(e.name for e in entries if e.is_dir())
  if not classes:
    raise DataError(f"{split_dir!r} has no class folders: an ImageFolder split holds one "
                    "folder per class (<split>/<class>/<image>).")
  if class_names is None:
    class_names = tuple(classes)
  unknown = sorted(set(classes) - set(class_names))
  if unknown:
    raise DataError(f"{split_dir!r} has classes the train split lacks: {unknown[:5]}; every "
                    "split's class folders must be among the train split's.")
  label_of = {name: i for i, name in enumerate(class_names)}
  paths, labels = [], []
  for name in classes:
    folder = os.path.join(split_dir, name)
    with os.scandir(folder) as entries:  # is_file() from the directory entry: no stat.
      files = sorted(e.name for e in entries if is_image_file(e.name) and e.is_file())
    if not files:
      raise DataError(f"Class folder {folder!r} holds no images (extensions "
                      f"{', '.join(IMAGE_EXTENSIONS)}); remove it or add its images.")
    paths += [os.path.join(folder, f) for f in files]
    labels += [label_of[name]] * len(files)
  return paths, labels, tuple(class_names)


def webdataset_samples(tar_path: str) -> Iterator[dict]:
  """The samples of one webdataset / img2dataset tar, in file order: {"key", "image": bytes
  or None, "caption": str or None, "error": why the sample cannot be used, or None}.

  Members are grouped by key (member_key).
  """
  current, sample = None, {}
  try:
    tar = tarfile.open(tar_path)
  except (OSError, tarfile.TarError) as e:
    raise DataError(f"Cannot read {tar_path!r} as a tar file ({e}).") from None
  with tar:
    for member in tar:
      if not member.isfile():
        continue
      key, ext = member_key(member.name)
      if key != current:
        if sample:
          yield _sample(current, sample)
        current, sample = key, {}
      sample[ext] = tar.extractfile(member).read()
    if sample:
      yield _sample(current, sample)


TAR_IMAGES = ("jpg", "jpeg", "png", "webp")  # The image members of a webdataset sample.


def member_key(name: str) -> tuple[str, str]:
  """(sample key, lower-case extension) of a tar member: webdataset's grouping, the name up to
  its first dot after the last '/'."""
  directory, _, base = name.rpartition("/")
  stem, _, ext = base.partition(".")
  return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _sample(key: str, members: dict) -> dict:
  image = next((members[e] for e in TAR_IMAGES if e in members), None)
  caption, error = members.get("txt"), None
  if caption is not None:
    try:
      caption = caption.decode("utf-8").strip()
    except UnicodeDecodeError as e:
      caption, error = None, f"caption is not UTF-8 text ({e.reason} at byte {e.start})"
  return {"key": key, "image": image, "caption": caption, "error": error}


def csv_rows(path: str, image_key: str = "filepath", caption_key: str = "title",
             separator: str = "\t") -> list[tuple[str, str, int]]:
  """(image path, caption, the row's last line in the file) rows of a UTF-8 CSV/TSV file
  (open_clip's --csv-img-key / --csv-caption-key / --csv-separator); relative paths are
  relative to the file's folder. A field a short row lacks is "" (the path too: a row
  without an image path)."""
  if not os.path.isfile(path):
    raise DataError(f"CSV file {path!r} does not exist.")
  root = os.path.dirname(os.path.abspath(path))
  # utf-8-sig: spreadsheet programs begin a UTF-8 file with a byte-order mark.
  with open(path, newline="", encoding="utf-8-sig") as f:
    try:
      reader = csv.DictReader(f, delimiter=separator)
      missing = [k for k in (image_key, caption_key) if k not in (reader.fieldnames or ())]
      if missing:
        raise DataError(
            f"{path!r} has no column {', '.join(map(repr, missing))}; its columns are "
            f"{reader.fieldnames} (separator {separator!r}). Name them with --csv_image_key / "
            "--csv_caption_key and --csv_separator.")
      rows = [(row[image_key] or "", row[caption_key] or "", reader.line_num) for row in reader]
    except UnicodeDecodeError as e:
      raise DataError(f"{path!r} is not UTF-8 text ({e.reason} at byte {e.start}); convert it, "
                      f"e.g. iconv -f latin1 -t utf-8 < {path} > utf8.tsv") from None
  return [(os.path.join(root, image) if image else "", caption, line)
          for image, caption, line in rows]


def read_manifest(directory: str) -> dict:
  """The manifest of a prepared directory, checked to be this format and version."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isdir(directory):
    raise DataError(f"Prepared data directory {directory!r} does not exist; make it with "
                    "`python -m tools.prepare_data --input=... --format=... --out=DIR`.")
  if not os.path.isfile(path):
    raise DataError(f"{directory!r} has no {MANIFEST}: it is not a prepared directory, or its "
                    "preparation did not finish (run the same tools.prepare_data command again: "
                    "it keeps the shards already written).")
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"Cannot read {path!r} ({e}); prepare the directory again.") from None
  if manifest.get("format") != FORMAT:
    raise DataError(f"{path!r} is not a manifest of tools.prepare_data (format "
                    f"{manifest.get('format')!r}, expected {FORMAT!r}).")
  if manifest.get("version") != VERSION:
    raise DataError(f"{directory!r} was prepared by format version {manifest.get('version')}; "
                    f"this code reads version {VERSION}: prepare it again with tools.prepare_data.")
  return manifest


def split_shards(directory: str, manifest: dict, split: str) -> list[str]:
  """Paths of a prepared split's shards, in order."""
  splits = manifest["splits"]
  if split not in splits:
    raise DataError(f"{directory!r} has no split {split!r}; it has {sorted(splits)} "
                    "(set config.data.train_split / test_split).")
  return [os.path.join(directory, name) for name in splits[split]["shards"]]
