"""tools/prepare_data.py: deterministic whatever the workers, resumable, errors that name the fix."""
import filecmp
import json
import os
import re
import tarfile

import pytest

from input_pipeline import records
from tests import photos
from tools import prepare_data


@pytest.fixture(name="tree", scope="module")
def tree_fixture(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("tree"))
  photos.image_folder(root, train_per_class=8, val_per_class=2)
  return root


def _files(out):
  return sorted(os.listdir(out))


def _same_dirs(a, b):
  assert _files(a) == _files(b)
  _, mismatch, errors = filecmp.cmpfiles(a, b, _files(a), shallow=False)
  assert not mismatch and not errors, mismatch + errors


def test_the_output_does_not_depend_on_the_workers(tmp_path, tree):
  for workers in (1, 2):
    prepare_data.prepare("image_folder", tree, str(tmp_path / f"w{workers}"), workers=workers,
                         shard_size=5, progress=False)
  _same_dirs(str(tmp_path / "w1"), str(tmp_path / "w2"))
  train = records.read_manifest(str(tmp_path / "w1"))["splits"]["train"]
  assert train["num_examples"] == 3 * 8 and train["num_skipped"] == 4
  assert len(train["shards"]) == -(-(3 * 8 + 4) // 5)  # Shards cut from the listed files.


def test_an_interrupted_run_keeps_finished_shards_and_resumes(tmp_path, tree, monkeypatch):
  reference, out = str(tmp_path / "ref"), str(tmp_path / "out")
  prepare_data.prepare("image_folder", tree, reference, workers=1, shard_size=5, progress=False)
  write, written = prepare_data._write_shard, []  # pylint: disable=protected-access

  def interrupted_in_the_third(task, report):
    if len(written) == 2:
      report(1)
      open(os.path.join(task["out"], task["name"] + ".array_record.tmp"), "wb").close()
      raise KeyboardInterrupt
    write(task, report)
    written.append(task["name"])

  monkeypatch.setattr(prepare_data, "_write_shard", interrupted_in_the_third)
  with pytest.raises(KeyboardInterrupt):
    prepare_data.prepare("image_folder", tree, out, workers=1, shard_size=5, progress=False)
  monkeypatch.undo()
  assert _files(out) == sorted(f"{n}.{e}" for n in written for e in ("array_record", "json"))
  kept = {n: os.stat(os.path.join(out, n + ".array_record")).st_mtime_ns for n in written}
  # A stray temporary file and a shard that lost its sidecar are redone too.
  open(os.path.join(out, "train-00005-of-00006.array_record.tmp"), "wb").close()
  os.remove(os.path.join(out, written[1] + ".json"))
  prepare_data.prepare("image_folder", tree, out, workers=2, shard_size=5, progress=False)
  _same_dirs(reference, out)
  assert os.stat(os.path.join(out, written[0] + ".array_record")).st_mtime_ns == kept[written[0]]
  assert os.stat(os.path.join(out, written[1] + ".array_record")).st_mtime_ns != kept[written[1]]


def test_changed_inputs_are_refused_unless_overwritten(tmp_path, tree):
  out = str(tmp_path / "out")
  prepare_data.prepare("image_folder", tree, out, workers=1, shard_size=5, progress=False)
  with pytest.raises(records.DataError, match="prepared from other inputs.*--overwrite"):
    prepare_data.prepare("image_folder", tree, out, workers=1, shard_size=4, progress=False)
  manifest = prepare_data.prepare("image_folder", tree, out, workers=1, shard_size=4,
                                  overwrite=True, progress=False)
  assert len(manifest["splits"]["train"]["shards"]) == 7  # 28 files, 4 a shard.
  assert len([f for f in os.listdir(out) if f.startswith("train-")]) == 2 * 7  # Old ones gone.


def test_webdataset_splits_from_two_commands_share_one_directory(tmp_path):
  made = photos.webdataset_shards(str(tmp_path / "train"), num_shards=2, per_shard=6)
  photos.webdataset_shards(str(tmp_path / "val"), num_shards=1, per_shard=4, broken=False)
  out = str(tmp_path / "out")
  prepare_data.prepare("webdataset", str(tmp_path / "train"), out, workers=2, progress=False)
  manifest = prepare_data.prepare("webdataset", os.path.join(tmp_path, "val", "{00000..00000}.tar"),
                                  out, split="val", workers=1, progress=False)
  assert manifest["splits"]["train"]["num_examples"] == made["num_valid"]
  assert manifest["splits"]["val"]["num_examples"] == 4
  skipped = {s["path"]: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
  assert {p.split("/", 1)[1] for p in skipped} == set(made["broken_keys"]) | set(
      made["no_caption_keys"])
  assert all(os.path.basename(p.split("/")[0]).endswith(".tar") for p in skipped)


def test_brace_patterns_expand_as_webdataset_writes_them():
  assert prepare_data.expand_braces("s/{008..011}.tar") == [
      "s/008.tar", "s/009.tar", "s/010.tar", "s/011.tar"]
  assert prepare_data.expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
  assert prepare_data.expand_braces("x{y}.tar") == ["x{y}.tar"]


def _cli_error(capsys, *argv):
  with pytest.raises(SystemExit) as exit_info:
    prepare_data.main(["--no_progress", *argv])
  assert exit_info.value.code == 2
  return capsys.readouterr().err


def test_bad_inputs_exit_2_naming_the_path_and_the_fix_and_write_nothing(tmp_path, tree, capsys):
  out = str(tmp_path / "out")
  nocap = photos.tar_without_captions(str(tmp_path / "nocap.tar"))
  table = photos.captions_csv(str(tmp_path / "csv"), n=4, broken=False)
  cases = [
      (["--format=image_folder", f"--input={tmp_path / 'nope'}"], "does not exist"),
      (["--format=image_folder", f"--input={tree}/train"],
       r"none of the split folders.*pass its parent"),
      (["--format=webdataset", f"--input={nocap}"],
       "holds images but no .txt captions"),
      (["--format=webdataset", f"--input={tmp_path}/{{0..3}}.tar"], r"0.tar' \(and 3 more\) does"),
      (["--format=csv", f"--input={table['csv']}", "--csv_caption_key=caption"],
       r"no column 'caption'; its columns are \['filepath', 'title'\]"),
  ]
  for argv, message in cases:
    err = _cli_error(capsys, *argv, f"--out={out}")
    assert err.startswith("error: ") and re.search(message, err), (argv, err)
    assert not os.path.exists(out)
  os.makedirs(os.path.join(tmp_path, "empty", "train", "a"))
  err = _cli_error(capsys, "--format=image_folder", f"--input={tmp_path / 'empty'}", f"--out={out}")
  assert "Class folder" in err and "holds no images" in err
  prepare_data.main(["--no_progress", "--format=image_folder", f"--input={tree}", f"--out={out}"])
  before = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)}
  err = _cli_error(capsys, "--format=csv", f"--input={table['csv']}", f"--out={out}")
  assert "already holds data prepared from image_folder" in err
  assert before == {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)}
  with open(os.path.join(out, records.MANIFEST)) as f:
    manifest = json.load(f)
  manifest["version"] = records.VERSION + 1
  with open(os.path.join(out, records.MANIFEST), "w") as f:
    json.dump(manifest, f)
  with pytest.raises(records.DataError, match="prepare it again"):
    records.read_manifest(out)


def test_a_bad_caption_or_row_skips_that_sample_alone(tmp_path):
  # A webdataset tar whose second sample's caption is Latin-1: only that sample is skipped.
  made = photos.webdataset_shards(str(tmp_path / "wds"), num_shards=1, per_shard=6, broken=False)
  tar_path = made["files"][0]
  with tarfile.open(tar_path) as tar:
    members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
  bad_key = sorted(made["captions"])[1]
  with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
    for name, data in members:
      if name == f"{bad_key}.txt":
        data = "un café noir".encode("latin-1")
      photos._add(tar, name, data)  # pylint: disable=protected-access
  manifest = prepare_data.prepare("webdataset", str(tmp_path / "wds"), str(tmp_path / "out"),
                                  workers=1, progress=False)
  train = manifest["splits"]["train"]
  assert train["num_examples"] == 5 and [s["path"] for s in train["skipped"]] == [
      f"00000.tar/{bad_key}"]
  assert "caption is not UTF-8 text" in train["skipped"][0]["reason"]

  # A CSV with a byte-order mark (as spreadsheets save UTF-8) and a short row.
  table = photos.captions_csv(str(tmp_path / "csv"), n=4, broken=False)
  lines = open(table["csv"], encoding="utf-8").read().splitlines()
  short = lines[:2] + ["images/00001.jpg"] + lines[2:]
  with open(table["csv"], "w", encoding="utf-8-sig") as f:
    f.write("\n".join(short) + "\n" + "\t" + "a caption without an image\n")
  manifest = prepare_data.prepare("csv", table["csv"], str(tmp_path / "csv_out"), workers=1,
                                  progress=False)
  train = manifest["splits"]["train"]
  assert train["num_examples"] == 4
  assert {s["path"]: s["reason"] for s in train["skipped"]} == {
      "images/00001.jpg": "no caption", "captions.tsv line 7": "no image path"}

  # A CSV that is not UTF-8 is named with the fix.
  with open(table["csv"], "wb") as f:
    f.write("filepath\ttitle\nimages/00000.jpg\tun café\n".encode("latin-1"))
  with pytest.raises(records.DataError, match=r"is not UTF-8 text.*iconv"):
    prepare_data.prepare("csv", table["csv"], str(tmp_path / "csv_out2"), workers=1,
                         progress=False)
