"""Real photographs in the formats users hold: an ImageFolder read in place, and ImageFolder,
webdataset tars and a CSV of captions prepared by tools/prepare_data.py; SimCLR and CLIP
trained on them end to end."""
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_contrast import checkpoint
from big_contrast import train
from input_pipeline import decode
from input_pipeline import encoded
from input_pipeline import pipeline
from input_pipeline import records
from input_pipeline import sources
from tests import photos
from tests.conftest import tiny_config
from tools import prepare_data

LARGE, SMALL = [decode.ViewSpec(16)] * 2, [decode.ViewSpec(8, (0.05, 0.3))] * 3


@pytest.fixture(name="folder", scope="module")
def folder_fixture(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("photos"))
  return root, photos.image_folder(root)


@pytest.fixture(name="prepared", scope="module")
def prepared_fixture(tmp_path_factory, folder):
  """Each format prepared: {"image_folder" | "webdataset" | "csv": (out dir, what was made)}."""
  base = tmp_path_factory.mktemp("prepared")
  out = {"image_folder": (str(base / "folder"), folder[1])}
  prepare_data.prepare("image_folder", folder[0], out["image_folder"][0], workers=2,
                       shard_size=8, progress=False)
  shards = photos.webdataset_shards(str(base / "wds_in"))
  val = photos.webdataset_shards(str(base / "wds_val"), num_shards=1, broken=False)
  out["webdataset"] = (str(base / "wds"), shards)
  prepare_data.prepare("webdataset", str(base / "wds_in"), out["webdataset"][0], split="train",
                       workers=2, progress=False)
  prepare_data.prepare("webdataset", str(base / "wds_val"), out["webdataset"][0], split="val",
                       workers=1, progress=False)
  del val
  table = photos.captions_csv(str(base / "csv_in"))
  out["csv"] = (str(base / "csv"), table)
  for split in ("train", "val"):
    prepare_data.prepare("csv", table["csv"], out["csv"][0], split=split, workers=1,
                         progress=False)
  return out


def _valid(info, split):
  return sum(info["counts"][split].values())


def _source(root, split="train", size=16):
  return encoded.EncodedImages(encoded.FolderRecords(os.path.join(root, split)), size)


def test_image_folder_lists_classes_sorted_and_ignores_other_files(folder):
  root, info = folder
  reader = encoded.FolderRecords(os.path.join(root, "train"))
  assert reader.class_names == tuple(sorted(photos.CLASSES))
  assert len(reader) == _valid(info, "train") + len(info["broken"])  # README.txt not listed.
  for path, label in zip(reader.paths, reader.labels):
    assert os.path.basename(os.path.dirname(path)) == reader.class_names[label]
  val = encoded.FolderRecords(os.path.join(root, "val"), reader.class_names)
  assert len(val) == _valid(info, "val")


def test_broken_files_are_replaced_by_the_next_image_and_counted(folder):
  root, info = folder
  source = _source(root)
  examples = [source[i] for i in range(len(source))]
  assert all(e["image"].shape == (16, 16, 3) and e["image"].dtype == np.uint8
             for e in examples)
  # Each broken file once, though a run of broken files is passed over more than once.
  assert sorted(s["path"] for s in source.skipped) == sorted(info["broken"])
  # Each broken file's slot holds its successor (the first after the end): no filler.
  keys = [source.reader[i]["key"] for i in range(len(source))]
  n = len(keys)
  for i, key in enumerate(keys):
    assert bool(examples[i][records.REPLACED]) == (key in info["broken"])
    if key in info["broken"]:
      j = next(j % n for j in range(i + 1, i + n) if keys[j % n] not in info["broken"])
      np.testing.assert_array_equal(examples[i]["image"], examples[j]["image"])


def test_an_evaluation_pass_says_how_many_examples_stood_in_for_broken_files(folder, caplog):
  import logging
  from big_contrast import sharding
  from big_contrast.evaluate import features
  source = _source(folder[0])
  mean_pixel = jax.jit(lambda x: jnp.mean(x.astype(jnp.float32), axis=(1, 2)))
  with caplog.at_level(logging.WARNING, logger="absl"):
    features.bank(mean_pixel, source, sharding.make_mesh([("data", 2)]), batch_size=8)
  assert f"{len(folder[1]['broken'])} evaluation examples read by this process stood in" in (
      caplog.text)


def test_a_damaged_record_in_a_prepared_shard_is_replaced_and_counted(tmp_path, prepared):
  out = str(tmp_path / "damaged")
  shutil.copytree(prepared["image_folder"][0], out)
  manifest = records.read_manifest(out)
  shard = os.path.join(out, manifest["splits"]["val"]["shards"][0])
  data = bytearray(open(shard, "rb").read())
  second = data.find(b"\xff\xd8\xff", data.find(b"\xff\xd8\xff") + 3)  # Record 1's JPEG.
  data[second + 100] ^= 0xFF  # Its chunk's hash no longer matches.
  with open(shard, "wb") as f:
    f.write(bytes(data))
  intact = encoded.EncodedImages(encoded.PreparedRecords(prepared["image_folder"][0], "val"), 16)
  source = encoded.EncodedImages(encoded.PreparedRecords(out, "val"), 16)
  with pytest.raises(records.BadRecord, match="RuntimeError"):
    source.reader[1]  # pylint: disable=pointless-statement
  rng = lambda: np.random.default_rng(0)
  views = source.train_views((LARGE, []), 1, rng())
  assert views[records.REPLACED] and source.skipped == [
      {"path": "val record 1", "reason": source.skipped[0]["reason"]}]
  np.testing.assert_array_equal(views["views"], intact.train_views((LARGE, []), 2, rng())["views"])
  assert not any(source[i][records.REPLACED] for i in (0, 2, 3))


def test_exif_rotated_photos_come_upright(folder):
  root, info = folder
  for rel, upright in info["upright"].items():
    with open(os.path.join(root, rel), "rb") as f:
      image = decode.decode(f.read())
    assert image.shape == upright.shape, rel
    assert np.abs(image.astype(float) - upright).mean() < 2.0, rel


@pytest.mark.parametrize("make, message", [
    (lambda root: os.path.join(root, "nope"), "is not a directory"),
    (lambda root: os.makedirs(os.path.join(root, "s", "empty_class")) or
     os.path.join(root, "s"), "holds no images"),
    (lambda root: os.makedirs(os.path.join(root, "f")) or os.path.join(root, "f"),
     "has no class folders"),
])
def test_image_folder_errors_name_the_path_and_the_fix(tmp_path, make, message):
  with pytest.raises(records.DataError, match=message):
    records.list_image_folder(make(str(tmp_path)))


def test_a_split_with_a_class_the_train_split_lacks_is_refused(tmp_path):
  for split, name in (("train", "a"), ("val", "b")):
    os.makedirs(tmp_path / split / name)
    (tmp_path / split / name / "x.jpg").write_bytes(photos.jpeg(16, 16))
  train_classes = records.list_image_folder(str(tmp_path / "train"))[2]
  with pytest.raises(records.DataError, match=r"classes the train split lacks: \['b'\]"):
    records.list_image_folder(str(tmp_path / "val"), train_classes)


def test_data_config_errors_come_before_anything_is_read(tmp_path, folder, prepared):
  cfg = tiny_config(**{"data.name": "image_folder"}).data
  with pytest.raises(ValueError, match="set config.data.path"):
    sources.check(cfg, sources.IMAGES)
  cfg.path = folder[0]
  with pytest.raises(ValueError, match=r"test_split='test'.*holds \['train', 'val'\]"):
    sources.check(cfg, sources.IMAGES)
  cfg.update(name="prepared", path=str(tmp_path))
  with pytest.raises(ValueError, match="no manifest.json"):
    sources.check(cfg, sources.IMAGES)
  cfg.update(path=prepared["image_folder"][0], test_split="val")
  sources.check(cfg, sources.IMAGES)
  with pytest.raises(ValueError, match="holds no captions"):
    sources.check(cfg, sources.IMAGE_TEXT)


def test_manifest_counts_examples_per_class_and_lists_skipped_files(prepared):
  out, info = prepared["image_folder"]
  manifest = records.read_manifest(out)
  assert manifest["class_names"] == sorted(photos.CLASSES)
  for split in ("train", "val"):
    assert manifest["splits"][split]["num_examples"] == _valid(info, split)
    assert manifest["splits"][split]["class_counts"] == info["counts"][split]
  assert sorted(s["path"] for s in manifest["splits"]["train"]["skipped"]) == sorted(
      info["broken"])
  wds, made = prepared["webdataset"]
  manifest = records.read_manifest(wds)
  assert manifest["has_captions"] and manifest["splits"]["train"]["num_examples"] == made[
      "num_valid"]
  assert manifest["splits"]["train"]["num_skipped"] == len(made["broken_keys"]) + len(
      made["no_caption_keys"])
  csv_out, table = prepared["csv"]
  assert records.read_manifest(csv_out)["splits"]["train"]["num_examples"] == table["num_valid"]


def test_prepared_records_hold_the_original_bytes_in_input_order(folder, prepared):
  root, _ = folder
  reader = encoded.PreparedRecords(prepared["image_folder"][0], "val")
  in_place = encoded.FolderRecords(os.path.join(root, "val"))
  assert len(reader) == len(in_place)
  for i in range(len(reader)):
    assert reader[i]["image"] == in_place[i]["image"]
    assert reader[i]["label"] == in_place[i]["label"] == reader.labels[i]
  assert len(reader.labels) == len(reader)  # From the sidecars, for label subsets.
  captions = encoded.PreparedRecords(prepared["webdataset"][0], "train")
  made = prepared["webdataset"][1]["captions"]
  assert sorted(captions[i]["captions"][0] for i in range(len(captions))) == sorted(
      made.values())


def test_train_batches_crop_every_view_on_the_host_and_are_a_function_of_step(folder):
  source = _source(folder[0])
  batches = pipeline.train_batches(source, 8, seed=3, views=(LARGE, SMALL))
  batch = batches[2]
  assert batch["views"].shape == (8, 2, 16, 16, 3) and batch["views"].dtype == np.uint8
  assert batch["small_views"].shape == (8, 3, 8, 8, 3)
  assert not np.array_equal(batch["views"][:, 0], batch["views"][:, 1])
  again = pipeline.train_batches(_source(folder[0]), 8, seed=3, views=(LARGE, SMALL))
  iterator = again.iterate(start_step=2)
  resumed = [next(iterator) for _ in range(4)]
  # What iterate gives the step holds no replacement flags; it counts them.
  assert set(batch) - set(resumed[0]) == {records.REPLACED}
  for key in resumed[0]:
    np.testing.assert_array_equal(batch[key], resumed[0][key])
  counts = [records.count_replaced(again[step][records.REPLACED], set()) for step in range(2, 6)]
  assert again.replaced == sum(counts) > 0  # The tree holds broken files.


def test_records_replaced_in_worker_processes_are_named_in_the_runs_log(folder, caplog):
  """The grain workers that decode write to no run's log: each broken file they replace is
  named, with its reason, by the process that reads the batches."""
  import logging
  batches = pipeline.train_batches(_source(folder[0]), 8, seed=3, views=(LARGE, []),
                                   num_workers=1)
  steps = -(-len(_source(folder[0])) // 8)  # One epoch reads every file.
  with caplog.at_level(logging.WARNING, logger="absl"):
    iterator = batches.iterate(0)
    for _ in range(steps):
      next(iterator)
    iterator.close()
  for key in folder[1]["broken"]:
    assert re.search(f"Record {re.escape(repr(key))} \\(.+\\) cannot be used",
                     caplog.text), (key, caplog.text)
  assert batches.replaced >= len(folder[1]["broken"])


class _Counting:
  """An EncodedImages that records which rows it decodes."""

  def __init__(self, source):
    self.source, self.read = source, []

  def __len__(self):
    return len(self.source)

  def train_views(self, specs, index, rng):
    self.read.append(int(index))
    return self.source.train_views(specs, index, rng)


def test_each_process_reads_only_its_rows_and_together_they_make_the_global_batch(folder):
  whole = _Counting(_source(folder[0]))
  halves = [_Counting(_source(folder[0])) for _ in range(2)]
  for step in range(3):
    full = pipeline.train_batches(whole, 8, 0, views=(LARGE, []))[step]
    parts = [pipeline.train_batches(h, 8, 0, p, 2, views=(LARGE, []))[step]
             for p, h in enumerate(halves)]
    np.testing.assert_array_equal(np.concatenate([p["views"] for p in parts]), full["views"])
  assert not set(halves[0].read) & set(halves[1].read)
  assert sorted(halves[0].read + halves[1].read) == sorted(whole.read)


def _config(data, method="simclr_digits", **overrides):
  return tiny_config(method, **{"data.image_size": 16, "augment.crop_size": 16,
                                "data.test_split": "val", "total_steps": 3, **data,
                                **overrides})


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("form", ["in_place", "prepared"])
def test_simclr_trains_on_an_image_folder(tmp_path, folder, prepared, form):
  data = ({"data.name": "image_folder", "data.path": folder[0]} if form == "in_place" else
          {"data.name": "prepared", "data.path": prepared["image_folder"][0]})
  result = train.train_and_evaluate(_config(data), str(tmp_path))
  rows = [r for r in _rows(str(tmp_path)) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3]
  # Broken files are replaced as the in-place tree is read; preparation left them out.
  from big_contrast import run as run_lib
  batches = run_lib.setup(_config(data)).train_batches()
  replaced = sum(records.count_replaced(batches[step][records.REPLACED], set())
                 for step in range(3))
  assert (replaced > 0) == (form == "in_place")
  assert result["replaced_examples"] == sum(r.get("replaced_examples", 0) for r in rows) == replaced
  assert all(np.isfinite(r["loss"]) and 0 <= r["data_wait_frac"] <= 1 for r in rows[1:])
  # 12 val images of 3 classes: accuracies are multiples of 1/12.
  for key in ("eval/knn_top1", "eval/linear_probe_top1"):
    assert abs(result["final"][key] * 12 - round(result["final"][key] * 12)) < 1e-4


@pytest.mark.parametrize("form", ["webdataset", "csv"])
def test_clip_trains_on_prepared_captions(tmp_path, prepared, form):
  config = _config({"data.name": "prepared", "data.path": prepared[form][0]}, "clip_digits",
                   **{"eval.evaluators": ("retrieval",)})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 3 and np.isfinite(_rows(str(tmp_path))[-2]["loss"])
  pairs = records.read_manifest(prepared[form][0])["splits"]["val"]["num_examples"]
  recall = [result["final"][f"eval/i2t_r@{k}"] for k in (1, 5, 10)]
  assert recall == sorted(recall) and (pairs > 10 or recall[-1] == 1.0)
  assert all(abs(r * pairs - round(r * pairs)) < 1e-4 for r in recall)


def test_label_positives_are_refused_on_data_without_labels(prepared):
  """SupCon on captions-only data: every label -1 would make the whole batch positives of
  each other, a loss that collapse minimises. Refused at setup, naming the setting."""
  from big_contrast import run as run_lib
  config = _config({"data.name": "prepared", "data.path": prepared["webdataset"][0]},
                   "supcon_digits", **{"eval.evaluators": ()})
  with pytest.raises(ValueError, match=r"config.loss.positives='label' trains on class "
                     r"labels, and this config.data \(name='prepared'\) has none"):
    run_lib.setup(config)
  config.loss.positives = "instance"
  run_lib.setup(config)  # SimCLR on the same data.


@pytest.mark.parametrize("form", ["digits", "image_folder", "prepared_captions"])
def test_batch_shapes_are_what_the_pipeline_delivers(folder, prepared, form):
  """Run.batch_shapes (benchmarks, ahead-of-time compiles) declares, without reading data,
  the batches the run's source really yields."""
  from big_contrast import run as run_lib
  config = {"digits": lambda: tiny_config("simclr_digits", mesh=[("data", 1)]),
            "image_folder": lambda: _config({"data.name": "image_folder",
                                             "data.path": folder[0]}, "swav_digits",
                                            mesh=[("data", 1)], **{"multicrop.num_small": 2}),
            "prepared_captions": lambda: _config({"data.name": "prepared",
                                                  "data.path": prepared["csv"][0]},
                                                 "clip_digits", mesh=[("data", 1)],
                                                 **{"eval.evaluators": ()})}[form]()
  run = run_lib.setup(config)
  batch = next(run.train_batches().iterate(0))
  shapes = run.batch_shapes()
  assert {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in batch.items()} == {
      k: (v.shape, np.dtype(v.dtype)) for k, v in shapes.items()}


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, folder, monkeypatch):
  config = _config({"data.name": "image_folder", "data.path": folder[0]},
                   **{"total_steps": 4, "eval.evaluators": ()})
  whole = train.train_and_evaluate(config, str(tmp_path / "whole"))["train_state"]
  save = checkpoint.Checkpointer.maybe_save

  def crash_after_step_2(self, step, ts, force=False):
    saved = save(self, step, ts, force)
    if step == 2:
      raise SystemExit("killed")
    return saved

  monkeypatch.setattr(checkpoint.Checkpointer, "maybe_save", crash_after_step_2)
  with pytest.raises(SystemExit):
    train.train_and_evaluate(config, str(tmp_path / "crashed"))
  monkeypatch.undo()
  # The data moved meanwhile (another mount): data.path may change on resume.
  shutil.copytree(folder[0], tmp_path / "moved")
  config.data.path = str(tmp_path / "moved")
  resumed = train.train_and_evaluate(config, str(tmp_path / "crashed"))["train_state"]
  for a, b in zip(jax.tree.leaves(whole["params"]), jax.tree.leaves(resumed["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
