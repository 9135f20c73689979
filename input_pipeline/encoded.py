"""Sources of encoded images decoded on the host at full resolution.

Two readers give random access to records {"image": encoded bytes, "label", "captions",
"key"}: an ImageFolder tree read in place (small trees) and a directory prepared by
tools/prepare_data.py (array_record shards; any size). `EncodedImages` turns either into

  [i]                 the evaluation example: {"image": uint8 [S, S, 3] (short side resized
                      to S = data.image_size, centre crop), "label", "captions"?}
  train_views(specs, i, rng)
                      a training example: {"views": uint8 [V, s, s, 3], "small_views":
                      uint8 [V', s', s', 3] (multi-crop; absent without), "label",
                      "captions"?}: every view its own random-resized crop of the
                      full-resolution image, from one decode (input_pipeline/decode.py)

A record that cannot be read or does not decode is replaced by the next one that does
(records.Replacer: shapes and batch sizes hold, the record is logged with its key and listed
in `skipped`, and the example that stands in is marked records.REPLACED for the count).
"""
import functools
import json
import os
from typing import Sequence

from absl import logging
import numpy as np

from input_pipeline import decode
from input_pipeline import records


class FolderRecords:
  """An ImageFolder split read in place. Files are only listed here (an ImageNet-size tree
  lists in seconds); one that does not decode is replaced and counted when it is read."""

  def __init__(self, split_dir: str, class_names: Sequence[str] | None = None):
    self.paths, self.labels, self.class_names = records.list_image_folder(
        split_dir, class_names)
    # Keys name files relative to the ImageFolder root (train/<class>/<file>), as the manifest
    # of a prepared copy does.
    self.root = os.path.dirname(os.path.normpath(split_dir))
    self.skipped = []
    self.fix = f"check the images under {split_dir}, or prepare them with tools.prepare_data"

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    path = self.paths[index]
    key = os.path.relpath(path, self.root)
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      data = b""  # Unreadable: decoding fails and the record is replaced, naming the file.
      logging.warning("Cannot read %s: %s", path, e)
    return {"image": data, "label": self.labels[index], "captions": (), "key": key}


class PreparedRecords:
  """One split of a directory written by tools/prepare_data.py."""

  def __init__(self, directory: str, split: str, manifest: dict | None = None):
    import grain  # Only here: the embedded data needs no array_record.
    manifest = manifest or records.read_manifest(directory)
    self.class_names = tuple(manifest["class_names"])
    self.has_captions = manifest["has_captions"]
    self.skipped = manifest["splits"][split]["skipped"] if split in manifest["splits"] else []
    self.split = split
    self.fix = f"prepare {directory} again with tools.prepare_data"
    self._shards = records.split_shards(directory, manifest, split)
    self._source = grain.sources.ArrayRecordDataSource(self._shards)

  @functools.cached_property
  def labels(self):
    """Every record's label, from the shards' sidecars (None where a sidecar predates them)."""
    labels = []
    for shard in self._shards:
      try:
        with open(shard[:-len(".array_record")] + ".json") as f:
          labels += json.load(f)["labels"]
      except (OSError, ValueError, KeyError):
        return None
    return np.asarray(labels, np.int32) if len(labels) == len(self) else None

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    # A torn shard or a damaged record: its own key is inside what cannot be read.
    with records.bad_record(f"{self.split} record {index}"):
      return records.decode_record(self._source[index])


class EncodedImages:
  """See the module docstring. `reader`: FolderRecords or PreparedRecords."""

  def __init__(self, reader, image_size: int, with_captions: bool = False):
    self.reader = reader
    self.image_size = image_size
    self.with_captions = with_captions
    self.class_names = reader.class_names
    self.num_classes = len(reader.class_names)
    self._replacer = records.Replacer(len(reader), reader.skipped, reader.fix)

  @property
  def skipped(self) -> list:
    """Each record this process (or preparation) found unusable once: {"path", "reason"}."""
    return self._replacer.skipped

  def __len__(self) -> int:
    return len(self.reader)

  def _example(self, record: dict, replaced: str) -> dict:
    out = {"label": np.int32(record["label"]), records.REPLACED: np.str_(replaced)}
    if self.with_captions:
      out["captions"] = record["captions"]
    return out

  def _decoded(self, index: int, fn):
    """(fn(image bytes), record, replaced) of the first usable record from `index` on."""
    def read(i):
      record = self.reader[i]
      try:
        return fn(record["image"]), record
      except decode.DecodeError as e:
        raise records.BadRecord(record["key"], f"does not decode: {e}") from None
    (value, record), replaced = self._replacer.first_usable(index, read)
    return value, record, replaced

  def __getitem__(self, index: int) -> dict:
    image, record, replaced = self._decoded(
        index, lambda data: decode.center_view(data, self.image_size))
    return {"image": image, **self._example(record, replaced)}

  def train_views(self, specs: tuple, index: int, rng: np.random.Generator) -> dict:
    """`specs` = (large view specs, small view specs); see the module docstring."""
    large, small = specs
    views, record, replaced = self._decoded(
        int(index), lambda data: decode.random_views(data, (*large, *small), rng))
    out = {"views": np.stack(views[:len(large)]), **self._example(record, replaced)}
    if small:
      out["small_views"] = np.stack(views[len(large):])
    return out
