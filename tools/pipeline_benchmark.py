"""Host input-pipeline benchmark: this project's JPEG decoding vs torchvision's, images/s per core.

  python -m tools.pipeline_benchmark --views=1,2 --workers=1,2 --repeats=3
  python -m tools.pipeline_benchmark --input=/data/imagenet/train --workers=16 --out=p.json

One process times, on the same JPEG files, with the same worker processes W, batch size and
output size, the training batches of
  ours-folder    encoded.EncodedImages(encoded.FolderRecords(split_dir)) through
                 pipeline.train_batches(num_workers=W, views=(specs, [])): what
                 `python -m big_contrast.main` runs on config.data.name='image_folder';
  ours-prepared  the same on a directory that tools/prepare_data.py's prepare() writes here
                 (--prepared: an existing one);
  torchvision    datasets.ImageFolder + RandomResizedCrop + PILToTensor (uint8, as ours) +
                 DataLoader(num_workers=W, persistent_workers, drop_last, torch threads 1 per
                 worker; a RandomSampler over many epochs: shuffle=True without epoch-end
                 stalls). Two views: two independent crops of one decoded image (solo-learn,
                 lightly). No flips: ours flips on the device.
--views=1: one crop, scale (0.9, 1.0) (open_clip's training RandomResizedCrop); --views=2: two,
scale (0.08, 1.0) (SimCLR); aspect (3/4, 4/3). Every (views, W) pair runs --repeats rounds of
all pipelines (order rotated per round; the median counts); a run starts fresh workers, takes
--warmup batches (worker start-up excluded), times --steps batches (img/s from the slope of a
least-squares fit of their arrival times: grain delivers bursts), touching every batch's pixels
(a strided mean), and stops its workers before the next run. Per worker core = img/s / W
(W processes decode; the main process only collects batches). Busy cores = CPU time of all the
processes / wall time, measured: it exceeds W for ours when W < cores (a grain worker runs 4
read threads, pipeline._READ_OPTIONS, and decoding releases the GIL), and falls short of W on
a shared machine; img/s per busy core is then the per-core cost. At either rate: the host
cores a GPU needs to feed ViT-B/16 SigLIP at 3,300 img/s (1 view) and ResNet-50 SimCLR at
2,800 img/s (2 views; images = examples, 2 views each).

Without --input, --num_images JPEGs (quality 90) of scikit-image's sample photos
(tests/photos.py) are written in an ImageFolder layout (4 classes) to a temp dir, sized like
ImageNet's train images: 45% 500x375, 15% 375x500, 15% 500x333, 25% long side uniform in
[300, 800] with short/long uniform in [0.6, 1.0], either orientation (smoother than ImageNet's:
~46 KB a file against ~110 KB). Output: a markdown table (stderr), the JSON (--out, or stdout).
"""
import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import psutil

from input_pipeline import decode
from input_pipeline import encoded
from input_pipeline import pipeline
from tests import photos
from tools import prepare_data

TARGETS = {1: ("ViT-B/16 SigLIP", 3300.0), 2: ("ResNet-50 SimCLR", 2800.0)}


def view_specs(views: int, size: int):
  scale = (0.9, 1.0) if views == 1 else (0.08, 1.0)
  return [decode.ViewSpec(size, scale)] * views


def _image_size(rng):
  u = rng.random()
  if u < 0.75:
    return ((500, 375), (375, 500), (500, 333))[int(u >= 0.45) + int(u >= 0.60)]
  long = int(rng.integers(300, 801))
  short = round(long * rng.uniform(0.6, 1.0))
  return (long, short) if rng.random() < 0.5 else (short, long)


def write_images(root: str, num_images: int, classes: int = 4) -> str:
  """`num_images` JPEGs in root/train/<class>/ (module docstring); returns the split dir."""
  rng = np.random.default_rng(0)
  split = os.path.join(root, "train")
  for i in range(num_images):
    folder = os.path.join(split, f"class_{i % classes}")
    os.makedirs(folder, exist_ok=True)
    width, height = _image_size(rng)
    with open(os.path.join(folder, f"{i:06d}.JPEG"), "wb") as f:
      f.write(photos.jpeg(width, height, seed=i, quality=90))
  return split


def _views_of_ours(batch):
  return [batch["views"]]


def _views_of_torch(batch):
  return [t.numpy() for t in (batch[0] if isinstance(batch[0], list) else [batch[0]])]


class _Crops:
  """`n` independent crops of one decoded image (a list), or the one crop when n == 1."""
  def __init__(self, transform, n):
    self.transform, self.n = transform, n

  def __call__(self, image):
    crops = [self.transform(image) for _ in range(self.n)]
    return crops[0] if self.n == 1 else crops


def _torch_worker_init(_):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)  # One core per worker, as ours.


def torch_batches(split_dir, views, size, batch_size, workers, seed):
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision import datasets, transforms  # pylint: disable=g-import-not-at-top
  spec = view_specs(views, size)[0]
  crop = transforms.Compose([transforms.RandomResizedCrop(size, scale=spec.scale,
                                                          ratio=spec.ratio),
                             transforms.PILToTensor()])
  dataset = datasets.ImageFolder(split_dir, transform=_Crops(crop, views))
  generator = torch.Generator().manual_seed(seed)
  sampler = torch.utils.data.RandomSampler(dataset, num_samples=1000 * len(dataset),
                                           generator=generator)
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
      persistent_workers=workers > 0, drop_last=True, worker_init_fn=_torch_worker_init,
      multiprocessing_context="spawn" if workers else None)
  return iter(loader)


def ours_batches(source, views, size, batch_size, workers, seed):
  return pipeline.train_batches(source, batch_size, seed, num_workers=workers,
                                views=(view_specs(views, size), [])).iterate(0)


def _cpu_seconds(procs):
  total = 0.0
  for p in procs:
    try:
      total += sum(p.cpu_times()[:2])  # user + system
    except psutil.Error:  # Exited.
      pass
  return total


def time_run(make, views_of, warmup, steps):
  """(images/s, busy cores, mean pixel) of `steps` batches after `warmup`; workers stopped."""
  me = psutil.Process()
  before = {p.pid for p in me.children(recursive=True)}
  it = make()
  images, pixel = 0, []
  for _ in range(warmup):
    next(it)
  procs = [me] + [p for p in me.children(recursive=True) if p.pid not in before]
  cpu, times = _cpu_seconds(procs), [time.perf_counter()]
  for _ in range(steps):
    arrays = views_of(next(it))
    images += len(arrays[0])
    pixel.append(np.mean([a.reshape(len(a), -1)[:, ::97].mean() for a in arrays]))
    times.append(time.perf_counter())
  busy = (_cpu_seconds(procs) - cpu) / (times[-1] - times[0])
  if busy <= 0:  # CPU time is counted in ticks (10 ms): the window held none.
    raise ValueError(f"{steps} batches took {times[-1] - times[0]:.4f} s, too short to measure "
                     "CPU time: raise --steps or --batch_size.")
  # Seconds per batch: the slope of the arrival times. Batches come in bursts (each grain
  # worker finishes its 4 threads' batches together), which end points would miscount.
  seconds_per_batch = np.polyfit(np.arange(len(times)), times, 1)[0]
  getattr(it, "close", lambda: None)()  # grain; torch's workers stop when `it` is freed.
  del it
  gc.collect()
  workers = [p for p in me.children(recursive=True) if p.pid not in before]
  _, alive = psutil.wait_procs(workers, timeout=20)
  for p in alive:  # Our own workers that did not stop: they would steal the next run's cores.
    p.terminate()
  return images / steps / seconds_per_batch, busy, float(np.mean(pixel))


def benchmark(args, split_dir, prepared_dir, views, workers):
  size, b, seed = args.size, args.batch_size, args.seed
  folder = encoded.EncodedImages(encoded.FolderRecords(split_dir), size)
  pipelines = {"torchvision": (lambda: torch_batches(split_dir, views, size, b, workers, seed),
                               _views_of_torch),
               "ours-folder": (lambda: ours_batches(folder, views, size, b, workers, seed),
                               _views_of_ours)}
  if prepared_dir:
    prepared = encoded.EncodedImages(
        encoded.PreparedRecords(prepared_dir, os.path.basename(split_dir)), size)
    pipelines["ours-prepared"] = (
        lambda: ours_batches(prepared, views, size, b, workers, seed), _views_of_ours)
  names, runs = list(pipelines), {n: [] for n in pipelines}
  warmup, steps = args.warmup or 6 * max(workers, 1), args.steps or max(40, 12 * workers)
  for r in range(args.repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      rate, busy, pixel = time_run(*pipelines[name], warmup, steps)
      runs[name].append({"images_per_s": rate, "busy_cores": busy, "mean_pixel": pixel})
      print(f"  views={views} workers={workers} round {r}: {name:13s} {rate:7.1f} img/s, "
            f"{busy:.2f} busy cores, mean pixel {pixel:.1f}", file=sys.stderr, flush=True)
  rows = []
  for name in names:
    rate = statistics.median(x["images_per_s"] for x in runs[name])
    busy = statistics.median(x["busy_cores"] for x in runs[name])
    model, target = TARGETS.get(views, ("", None))
    rows.append({"pipeline": name, "views": views, "workers": workers, "images_per_s": rate,
                 "images_per_s_per_core": rate / max(workers, 1), "busy_cores": busy,
                 "images_per_s_per_busy_core": rate / busy, "target": model,
                 "target_images_per_s": target, "warmup": warmup, "steps": steps,
                 "runs": runs[name]})
  for row in rows:
    for kind in ("", "busy_"):
      per_core, target = row[f"images_per_s_per_{kind}core"], row["target_images_per_s"]
      row[f"ratio_to_torchvision_per_{kind}core"] = (
          per_core / rows[0][f"images_per_s_per_{kind}core"])
      row[f"cores_for_target_per_{kind}core"] = math.ceil(target / per_core) if target else None
  return rows


def table(rows) -> str:
  lines = ["| pipeline | views | workers | img/s | img/s per worker core | busy cores | "
           "img/s per busy core | ratio to torchvision (per worker; per busy core) | cores for "
           "3,300 img/s (1 view) / 2,800 (2 views) (per worker; per busy core) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['pipeline']} | {r['views']} | {r['workers']} | {r['images_per_s']:.1f} | "
        f"{r['images_per_s_per_core']:.1f} | {r['busy_cores']:.2f} | "
        f"{r['images_per_s_per_busy_core']:.1f} | {r['ratio_to_torchvision_per_core']:.2f}; "
        f"{r['ratio_to_torchvision_per_busy_core']:.2f} | {r['cores_for_target_per_core']}; "
        f"{r['cores_for_target_per_busy_core']} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ints = lambda text: [int(x) for x in text.split(",")]
  parser.add_argument("--views", type=ints, default=[2], help="1 (CLIP), 2 (SimCLR), or 1,2")
  parser.add_argument("--workers", type=ints, default=[os.cpu_count() or 1],
                      help="worker processes, or a list: 1,2 (default: all cores)")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, help="timed batches per run (default 12 W, >= 40)")
  parser.add_argument("--warmup", type=int, help="untimed batches first (default 6 W)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--input", help="an existing ImageFolder split (<split>/<class>/<image>)")
  parser.add_argument("--num_images", type=int, default=2000)
  parser.add_argument("--prepared", help="that split already prepared (else prepared here)")
  parser.add_argument("--out", help="write the JSON here (default: stdout)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    split_dir = os.path.abspath(args.input) if args.input else write_images(tmp, args.num_images)
    files = [os.path.join(d, f) for d, _, fs in os.walk(split_dir) for f in fs]
    data = {"split_dir": split_dir, "num_files": len(files), "generated": not args.input,
            "mean_file_bytes": float(np.mean([os.path.getsize(f) for f in files]))}
    prepared_dir = args.prepared
    if not prepared_dir:
      prepared_dir = os.path.join(tmp, "prepared")
      prepare_data.prepare("image_folder", os.path.dirname(split_dir), prepared_dir,
                           splits=(os.path.basename(split_dir),), progress=False)
    rows = [row for v in args.views for w in args.workers
            for row in benchmark(args, split_dir, prepared_dir, v, w)]
  result = {"data": data, "size": args.size, "batch_size": args.batch_size,
            "repeats": args.repeats,
            "cpu_count": os.cpu_count(), "wall_s": time.perf_counter() - start, "rows": rows}
  text = json.dumps(result, indent=1)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  else:
    print(text)
  print(table(rows), file=sys.stderr)
  return result


if __name__ == "__main__":
  main()
