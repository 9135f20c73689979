"""Prepare a dataset once for training: array_record shards of encoded images and a manifest.

  python -m tools.prepare_data --format=image_folder --input=ROOT --out=DIR [--splits=train,val]
  python -m tools.prepare_data --format=webdataset --input='shards/{00000..00012}.tar' --out=DIR
      [--split=train]
  python -m tools.prepare_data --format=csv --input=captions.tsv --out=DIR [--split=train]
      [--csv_image_key=filepath] [--csv_caption_key=title] [--csv_separator=',']
  common options: [--workers=N] [--shard_size=1024] [--overwrite] [--no_progress]

Writes DIR/<split>-00000-of-00008.array_record shards of the records and DIR/manifest.json that
input_pipeline/records.py describes (train with config.data.name='prepared', data.path=DIR).
  image_folder  ROOT/<split>/<class>/<image> for each of --splits that exists; the first split
                (train) sets the class names, the others use them (splits already in DIR keep
                theirs). No captions.
  webdataset    img2dataset / webdataset tars (a directory of *.tar, a glob, or a brace pattern,
                several joined by '::'): one output shard per tar; the caption is the .txt.
  csv           open_clip's captions CSV/TSV: image paths (relative to the file's folder) and
                captions. No labels.
Every image is decoded in full first: one that fails, and a sample without image or caption,
is skipped and listed in the manifest with its path and reason.

Several commands may write different splits into one DIR (webdataset train, then val). Shards
are written by --workers processes, each finished shard renamed into place with a sidecar
<shard>.json (its counts, skipped inputs and a fingerprint of its inputs); the manifest is
written last from the sidecars. Running the same command again resumes: finished shards are
kept, the rest redone. The output does not depend on --workers.
"""
import argparse
import concurrent.futures
import fcntl
import glob
import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import tarfile
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

from array_record.python import array_record_module

from input_pipeline import decode
from input_pipeline import records

DataError = records.DataError

# One record per chunk: random access reads just that record.
WRITER_OPTIONS = "group_size:1"
_SPLIT_NAME = re.compile(r"[\w.-]+")  # It starts the shards' file names.


def _shard_pattern(split: str):
  """Matches the file names of a split's shards and sidecars, finished or not."""
  return re.compile(f"(?P<name>{re.escape(split)}-\\d{{5}}-of-\\d{{5}})"
                    r"\.(array_record|json)(?P<tmp>\.tmp)?")


def _fingerprint(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def _chunks(items, size):
  return [items[i:i + size] for i in range(0, len(items), size)]


def _stat(path: str):
  try:
    st = os.stat(path)
  except OSError:
    return None, None
  return st.st_size, st.st_mtime_ns


# --- Listing the inputs -------------------------------------------------------------------

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
  """Expands `{00000..00012}` (zero-padded as written) and `{a,b}` groups, as webdataset does."""
  for m in _BRACE.finditer(pattern):
    body = m.group(1)
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
      a, b = span.groups()
      width = max(len(a), len(b)) if (a[0] == "0" and len(a) > 1) or (
          b[0] == "0" and len(b) > 1) else 0
      lo, hi = int(a), int(b)
      step = 1 if hi >= lo else -1
      options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
      options = body.split(",")
    else:
      continue  # A literal {...}.
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [head + o + rest for o in options for rest in expand_braces(tail)]
  return [pattern]


def tar_paths(spec: str) -> list[str]:
  """The sorted tars of --input: directories (their *.tar), globs and brace patterns, '::'
  between several."""
  usage = ("--input takes a directory of .tar files, a glob or a brace pattern like "
           "'shards/{00000..00012}.tar'")
  paths, missing = set(), []
  for part in filter(None, spec.split("::")):
    if os.path.isdir(part):
      found = glob.glob(os.path.join(glob.escape(part), "*.tar"))
      if not found:
        raise DataError(f"{part!r} holds no .tar files; {usage}.")
      paths.update(found)
      continue
    for path in expand_braces(part):
      if any(c in path for c in "*?["):
        found = [p for p in glob.glob(path) if os.path.isfile(p)]
        if not found:
          raise DataError(f"No file matches {path!r}; {usage}.")
        paths.update(found)
      elif os.path.isfile(path):
        paths.add(path)
      else:
        missing.append(path)
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise DataError(f"Webdataset shard {missing[0]!r}{more} does not exist; {usage}.")
  if not paths:
    raise DataError(f"--input={spec!r} names no tar files; {usage}.")
  return sorted(paths)


def _scan_tar(path: str) -> dict:
  """Sample and image counts of a tar, from its member headers only (no image bytes read)."""
  samples = images = 0
  has_text, current = False, None
  try:
    with tarfile.open(path) as tar:
      for member in tar:
        if not member.isfile():
          continue
        key, ext = records.member_key(member.name)
        if key != current:  # Grouped as records.webdataset_samples groups them.
          samples, current = samples + 1, key
        images += ext in records.TAR_IMAGES
        has_text |= ext == "txt"
  except (OSError, tarfile.TarError) as e:
    why = " ".join(str(e).split())  # tarfile's message for an unknown file spans lines.
    raise DataError(f"Cannot read {path!r} as a tar file ({why}); download it again or leave "
                    "it out of --input.") from None
  if images and not has_text:
    raise DataError(f"{path!r} holds images but no .txt captions; webdataset preparation is for "
                    "image-text pairs (<key>.jpg with <key>.txt, as img2dataset writes them): "
                    "caption the images, or prepare class folders with --format=image_folder.")
  return {"samples": samples, "images": images}


def _plan_image_folder(root, splits, existing):
  """[(split, items, class_names)]; items are (path, label, key)."""
  if not os.path.isdir(root):
    raise DataError(f"--input={root!r} does not exist: it is an ImageFolder root holding split "
                    "folders (<root>/train/<class>/<image>).")
  present = [s for s in splits if os.path.isdir(os.path.join(root, s))]
  if not present:
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
    raise DataError(f"{root!r} has none of the split folders {list(splits)}; it holds "
                    f"{folders[:8]}: pass --splits naming them (if those are class folders, "
                    "--input is their split folder: pass its parent).")
  # Splits already prepared and not written now keep their labels: their class names rule.
  others = [s for s in (existing or {}).get("splits", {}) if s not in present]
  class_names = tuple(existing["class_names"]) if others else None
  plans = []
  for split in present:
    try:
      paths, labels, names = records.list_image_folder(os.path.join(root, split), class_names)
    except DataError as e:
      if not others:
        raise
      raise DataError(f"{e} (The classes are those of the splits {others} already in --out; "
                      "to change them, prepare every split again with --overwrite.)") from None
    class_names = class_names or names
    items = [(p, label, os.path.relpath(p, root).replace(os.sep, "/"))
             for p, label in zip(paths, labels)]
    plans.append((split, items, class_names))
  return plans


def _plan_csv(path, image_key, caption_key, separator):
  """(path, caption, key) per row; the key is the path relative to the CSV's folder."""
  rows = records.csv_rows(path, image_key, caption_key, separator)
  if not rows:
    raise DataError(f"{path!r} has a header but no rows.")
  root = os.path.dirname(os.path.abspath(path)) + os.sep
  # A row without an image path is named by its line in the file.
  items = [(p, c, (p[len(root):] if p.startswith(root) else p) or
            f"{os.path.basename(path)} line {line}") for p, c, line in rows]
  if not any(os.path.isfile(p) for p, _, _ in items):
    raise DataError(f"No image that {path!r} lists exists ({len(items)} rows, the first "
                    f"{items[0][0]!r}); its paths are relative to the CSV file's folder.")
  return items


# --- Writing one shard (in a worker) ------------------------------------------------------

def _check_image(data: bytes):
  """None if the image decodes in full, else why not."""
  try:
    decode.decode(data, head=decode.header(data))
  except Exception as e:  # pylint: disable=broad-except  # DecodeError, or a decoder's bug.
    text = str(e) if isinstance(e, decode.DecodeError) else f"{type(e).__name__}: {e}"
    # Pillow names the BytesIO by its address: keep the reasons the same from run to run.
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text) or type(e).__name__
  return None


def _read(path: str):
  """(bytes, None) or (None, why not)."""
  try:
    with open(path, "rb") as f:
      return f.read(), None
  except FileNotFoundError:
    return None, "missing file"
  except OSError as e:
    return None, f"cannot read: {e.strerror or e}"


def _inputs(task):
  """(image bytes, label, captions, key, reason to skip or None) of a shard's inputs."""
  source = task["source"]
  if source in ("image_folder", "csv"):
    for path, value, key in task["items"]:
      data, reason = _read(path) if path else (None, "no image path")
      label, captions = (value, ()) if source == "image_folder" else (-1, (value,))
      if reason is None and source == "csv" and not value.strip():
        reason = "no caption"
      yield data, label, captions, key, reason
    return
  tar, base = task["tar"], os.path.basename(task["tar"])
  try:
    for sample in records.webdataset_samples(tar):
      caption = sample["caption"]
      reason = sample["error"] or ("no image" if sample["image"] is None else
                                   "no caption" if not caption else None)
      yield (sample["image"], -1, (caption,) if caption else (), f"{base}/{sample['key']}",
             reason)
  except (OSError, tarfile.TarError, ValueError) as e:
    # A truncated tar or an undecodable member ends the reading: say where, keep the rest.
    yield None, -1, (), base, f"cannot read the rest of the tar: {e}"


def _write_shard(task, report) -> None:
  """Writes shard `task` as <name>.array_record.tmp and <name>.json.tmp, then renames both
  (the sidecar last: it marks the shard finished); report(1) after each input."""
  out, name = task["out"], task["name"]
  shard, sidecar = os.path.join(out, name + ".array_record"), os.path.join(out, name + ".json")
  class_names = task["class_names"]
  count, class_counts, skipped, labels = 0, dict.fromkeys(class_names, 0), [], []
  writer = array_record_module.ArrayRecordWriter(shard + ".tmp", WRITER_OPTIONS)
  finished = False
  try:
    for data, label, captions, key, reason in _inputs(task):
      reason = reason or _check_image(data)
      if reason:  # Named as the input names it (a path relative to --input), to the byte.
        skipped.append({"path": key, "reason": reason})
      else:
        writer.write(records.encode_record(data, label, captions, key))
        labels.append(int(label))
        count += 1
        if label >= 0:
          class_counts[class_names[label]] += 1
      report(1)
    writer.close()
    writer = None
    with open(sidecar + ".tmp", "w") as f:
      # labels: each record's, in order (label subsets for fine-tuning read no records).
      json.dump({"shard": name + ".array_record", "count": count, "class_counts": class_counts,
                 "skipped": skipped, "inputs": task["inputs"], "labels": labels}, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    _fsync(shard + ".tmp")
    os.replace(shard + ".tmp", shard)
    os.replace(sidecar + ".tmp", sidecar)
    finished = True
  finally:
    if writer is not None:
      writer.close()
    if not finished:  # Failed or interrupted: leave no partial shard.
      for path in (shard + ".tmp", sidecar + ".tmp"):
        _remove(path)


def _fsync(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _remove(path):
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


_counter = None  # The records done by all workers (multiprocessing.Value).


def _init_worker(counter):
  global _counter
  _counter = counter
  # Ctrl-C reaches the whole process group: the parent alone decides, and stops the pool.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent):
  # A killed parent leaves its workers waiting on its task queue forever: end them (the shard
  # being written stays a .tmp file, which the next run removes).
  while os.getppid() == parent:
    time.sleep(1)
  os._exit(1)


def _report(n):
  with _counter.get_lock():
    _counter.value += n


def _shard_in_worker(task):
  _write_shard(task, _report)
  return task["name"]


# --- The command --------------------------------------------------------------------------

def _read_sidecar(out, name):
  try:
    with open(os.path.join(out, name + ".json")) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _done(task):
  """The shard's sidecar if both its files are in place and were made from these inputs."""
  side = _read_sidecar(task["out"], task["name"])
  if side and side.get("inputs") == task["inputs"] and os.path.isfile(
      os.path.join(task["out"], task["name"] + ".array_record")):
    return side
  return None


def _existing_manifest(out, source_format):
  """The manifest already in --out (None if none), checked to be of `source_format`."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise DataError(f"--out={out!r} is a file; name a directory (it is created if missing).")
  if not os.path.isfile(os.path.join(out, records.MANIFEST)):
    return None
  manifest = records.read_manifest(out)
  if manifest.get("source_format") != source_format:
    raise DataError(f"{out!r} already holds data prepared from {manifest.get('source_format')} "
                    f"(splits {sorted(manifest.get('splits', {}))}); one directory holds one "
                    f"source format: write the {source_format} data to another --out.")
  return manifest


class _Locked:
  """An exclusive lock on directory `out` while the manifest is read, merged and replaced."""

  def __init__(self, out):
    self.fd = os.open(out, os.O_RDONLY)

  def __enter__(self):
    fcntl.flock(self.fd, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    fcntl.flock(self.fd, fcntl.LOCK_UN)
    os.close(self.fd)


def _update_manifest(out, source_format, update) -> dict | None:
  """Applies update(manifest) to --out's manifest under the lock and writes it atomically
  (removes it when no split is left)."""
  path = os.path.join(out, records.MANIFEST)
  with _Locked(out):
    manifest = _existing_manifest(out, source_format) or {
        "format": records.FORMAT, "version": records.VERSION, "source_format": source_format,
        "class_names": [], "has_captions": source_format != "image_folder", "splits": {}}
    update(manifest)
    if not manifest["splits"]:
      _remove(path)
      return None
    with open(path + ".tmp", "w") as f:
      json.dump(manifest, f, indent=2)
      f.flush()
      os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
  return manifest


def _split_entry(out, tasks) -> dict:
  entry = {"num_examples": 0, "shards": [], "class_counts": {}, "num_skipped": 0,
           "skipped": [], "inputs": _fingerprint([t["inputs"] for t in tasks])}
  for task in tasks:
    side = _read_sidecar(out, task["name"])
    entry["num_examples"] += side["count"]
    entry["shards"].append(side["shard"])
    for name, n in side["class_counts"].items():
      entry["class_counts"][name] = entry["class_counts"].get(name, 0) + n
    entry["skipped"] += side["skipped"]
  entry["num_skipped"] = len(entry["skipped"])
  return entry


def _pool(workers, counter=None):
  # spawn: a fresh interpreter per worker, never a fork of a process holding threads (JAX's,
  # grain's). Unlike multiprocessing.Pool, an executor fails (BrokenProcessPool) when a worker
  # dies, out of memory say, instead of waiting for its shard forever.
  return concurrent.futures.ProcessPoolExecutor(
      workers, multiprocessing.get_context("spawn"), _init_worker, (counter,))


def _stop(executor):
  """Ends the workers now, mid-shard (ProcessPoolExecutor.terminate_workers from Python 3.14)."""
  if hasattr(executor, "terminate_workers"):
    executor.terminate_workers()
    return
  for process in list((getattr(executor, "_processes", None) or {}).values()):
    process.terminate()
  executor.shutdown(wait=True, cancel_futures=True)


def _run(tasks, sizes, done_inputs, workers, progress):
  """Writes the shards of `tasks` (sizes: inputs per task) with a progress bar over inputs."""
  from tqdm import tqdm
  with tqdm(total=done_inputs + sum(sizes), initial=done_inputs, unit="img",
            disable=not progress, dynamic_ncols=True, smoothing=0.05) as bar:
    if workers <= 1 or len(tasks) <= 1:
      for task in tasks:
        _write_shard(task, bar.update)
      return
    counter = multiprocessing.get_context("spawn").Value("q", 0)
    executor = _pool(min(workers, len(tasks)), counter)
    try:
      running = {executor.submit(_shard_in_worker, task) for task in tasks}
      while running:
        finished, running = concurrent.futures.wait(
            running, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in finished:
          future.result()  # A worker's error stops the run.
        bar.update(done_inputs + counter.value - bar.n)
    except BaseException:
      _stop(executor)  # Workers die mid-shard: the caller removes their .tmp files.
      raise
    executor.shutdown()


def _scan(paths, workers):
  if workers <= 1 or len(paths) <= 1:
    return [_scan_tar(p) for p in paths]
  executor = _pool(min(workers, len(paths)))
  try:
    return list(executor.map(_scan_tar, paths))
  except BaseException:
    _stop(executor)
    raise
  finally:
    executor.shutdown()


def prepare(format: str, input: str, out: str,  # pylint: disable=redefined-builtin
            splits: Sequence[str] = ("train", "val"), split: str = "train",
            workers: int | None = None, shard_size: int = 1024,
            csv_image_key: str = "filepath", csv_caption_key: str = "title",
            csv_separator: str | None = None, overwrite: bool = False,
            progress: bool = True) -> dict:
  """Prepares `input` into `out` (see the module docstring) and returns the manifest.

  `splits` (image_folder) or `split` (webdataset, csv) names what is written. Raises DataError,
  naming the path and the fix, before anything is written when an input is missing or wrong.
  """
  if format not in records.SOURCE_FORMATS:
    raise ValueError(f"format={format!r}: one of {records.SOURCE_FORMATS}.")
  if shard_size < 1:
    raise ValueError(f"shard_size={shard_size}: at least 1.")
  workers = (os.cpu_count() or 1) if workers is None else workers
  if workers < 1:
    raise ValueError(f"workers={workers}: at least 1.")
  splits = tuple(splits) if format == "image_folder" else (split,)
  for name in splits:
    if not _SPLIT_NAME.fullmatch(name or ""):
      raise ValueError(f"Split name {name!r}: letters, digits, '_', '.' and '-' only.")
  existing = _existing_manifest(out, format)

  # Every input of every split, in input order, cut into shards; nothing is written yet.
  tasks_of, class_names = {}, ()
  if format == "image_folder":
    for name, items, class_names in _plan_image_folder(input, splits, existing):
      tasks_of[name] = [{"items": c} for c in _chunks(items, shard_size)]
  elif format == "csv":
    separator = csv_separator or ("\t" if input.lower().endswith(".tsv") else ",")
    items = _plan_csv(input, csv_image_key, csv_caption_key, separator)
    tasks_of[split] = [{"items": c} for c in _chunks(items, shard_size)]
  else:
    tasks_of[split] = [{"tar": path} for path in tar_paths(input)]
  for name, tasks in tasks_of.items():
    for i, task in enumerate(tasks):
      # What the shard holds, to the byte as far as sizes and times tell: a resume keeps it.
      what = ([os.path.basename(task["tar"]), *_stat(task["tar"])] if "tar" in task else
              [[key, value, *_stat(path)] for path, value, key in task["items"]])
      task.update(source=format, out=out, name=f"{name}-{i:05d}-of-{len(tasks):05d}",
                  class_names=list(class_names),
                  inputs=_fingerprint([records.VERSION, format, i, len(tasks),
                                       list(class_names), what]))

  replace = []
  for name, tasks in tasks_of.items():
    old = (existing or {}).get("splits", {}).get(name)
    if old is None:
      continue
    if overwrite:
      replace.append(name)
    elif old.get("inputs") != _fingerprint([t["inputs"] for t in tasks]):
      raise DataError(f"{out!r} already holds split {name!r}, prepared from other inputs (or "
                      "another --shard_size); pass --overwrite to replace it, or use another "
                      "--out.")

  # Scan the tars still to write: every one must hold captions before anything is written.
  if format == "webdataset":
    scan = [t for t in tasks_of[split] if split in replace or _done(t) is None]
    counts = _scan([t["tar"] for t in scan], workers)
    if scan and not any(c["images"] for c in counts):
      raise DataError(f"None of the {len(scan)} tars of --input={input!r} holds images "
                      f"({', '.join('.' + e for e in records.TAR_IMAGES)} members).")
    for task, c in zip(scan, counts):
      task["size"] = c["samples"]

  os.makedirs(out, exist_ok=True)
  if replace:  # Out of the manifest first, so that it never names a deleted shard.
    def drop(manifest):
      for name in replace:
        del manifest["splits"][name]
    _update_manifest(out, format, drop)
  names = {t["name"] for tasks in tasks_of.values() for t in tasks}
  for name in tasks_of:
    pattern = _shard_pattern(name)
    for file in os.listdir(out):
      m = pattern.fullmatch(file)
      if m and (m["tmp"] or m["name"] not in names or name in replace):
        _remove(os.path.join(out, file))

  todo, sizes, done_inputs = [], [], 0
  for tasks in tasks_of.values():
    for task in tasks:
      side = _done(task)
      if side is not None:
        done_inputs += side["count"] + len(side["skipped"])
      else:
        todo.append(task)
        sizes.append(task.get("size", len(task.get("items", ()))))
  try:
    _run(todo, sizes, done_inputs, workers, progress)
  except BaseException:
    for task in todo:  # Only finished shards stay.
      for ext in (".array_record.tmp", ".json.tmp"):
        _remove(os.path.join(out, task["name"] + ext))
    raise

  entries = {name: _split_entry(out, tasks) for name, tasks in tasks_of.items()}
  for name, entry in entries.items():
    if entry["num_examples"] == 0:
      first = entry["skipped"][0] if entry["skipped"] else {"path": input, "reason": "empty"}
      raise DataError(f"No input of split {name!r} could be used ({entry['num_skipped']} "
                      f"skipped, the first {first['path']!r}: {first['reason']}); fix the "
                      "inputs and run the command again.")

  def update(manifest):
    if format == "image_folder":
      manifest["class_names"] = list(class_names)
    manifest["splits"].update(entries)
  return _update_manifest(out, format, update)


def summary(manifest: dict, out: str, splits: Sequence[str], show: int = 5) -> str:
  lines = []
  for name in splits:
    entry = manifest["splits"].get(name)
    if entry is None:
      continue
    shards = len(entry["shards"])
    lines.append(f"{name}: {entry['num_examples']} examples in {shards} "
                 f"shard{'s' * (shards != 1)}, {entry['num_skipped']} skipped"
                 + (":" if entry["skipped"] else ""))
    for s in entry["skipped"][:show]:
      lines.append(f"  {s['path']}: {s['reason']}")
    if entry["num_skipped"] > show:
      lines.append(f"  ... and {entry['num_skipped'] - show} more (all in the manifest)")
  lines.append(f"manifest: {os.path.join(out, records.MANIFEST)}")
  return "\n".join(lines)


def _separator(text: str) -> str:
  return {"\\t": "\t", "tab": "\t"}.get(text, text)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--format", required=True, choices=records.SOURCE_FORMATS,
                      help="what --input is")
  parser.add_argument("--input", required=True,
                      help="ImageFolder root, tars (directory, glob, brace pattern), or CSV file")
  parser.add_argument("--out", required=True, help="the prepared directory")
  parser.add_argument("--splits", default="train,val",
                      help="image_folder: the split folders, train (sets the classes) first")
  parser.add_argument("--split", default="train", help="webdataset, csv: the split written")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="worker processes (default: one per CPU)")
  parser.add_argument("--shard_size", type=int, default=1024,
                      help="records per shard (webdataset: one shard per tar)")
  parser.add_argument("--csv_image_key", default="filepath", help="csv: the image path column")
  parser.add_argument("--csv_caption_key", default="title", help="csv: the caption column")
  parser.add_argument("--csv_separator", type=_separator, default=None,
                      help="csv: the separator (default: tab for .tsv, else comma; '\\t' is tab)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace splits already prepared in --out")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  if args.workers < 1 or args.shard_size < 1:
    parser.error("--workers and --shard_size are at least 1")
  splits = [s.strip() for s in args.splits.split(",") if s.strip()]
  for name in splits + [args.split]:
    if not _SPLIT_NAME.fullmatch(name):
      parser.error(f"split name {name!r}: letters, digits, '_', '.' and '-' only")

  # A kill (SIGTERM) cleans up as Ctrl-C does: only finished shards stay.
  signal.signal(signal.SIGTERM, signal.default_int_handler)
  start = time.time()
  try:
    manifest = prepare(args.format, args.input, args.out, splits=splits, split=args.split,
                       workers=args.workers, shard_size=args.shard_size,
                       csv_image_key=args.csv_image_key, csv_caption_key=args.csv_caption_key,
                       csv_separator=args.csv_separator, overwrite=args.overwrite,
                       progress=not args.no_progress)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  except BrokenProcessPool as e:
    print(f"error: a worker process died ({e}); the finished shards are kept: run the same "
          "command again, with fewer --workers if memory ran out.", file=sys.stderr)
    raise SystemExit(1) from None
  except KeyboardInterrupt:
    print("interrupted: the finished shards are kept; run the same command again to resume.",
          file=sys.stderr)
    raise SystemExit(130) from None
  written = splits if args.format == "image_folder" else [args.split]
  print(summary(manifest, args.out, written))
  print(f"done in {time.time() - start:.1f} s")


if __name__ == "__main__":
  main()
