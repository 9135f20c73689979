"""One-shot GPU check: our train steps beside the PyTorch peers, measured in one command.

  python -m tools.gpu_check --peer_bench=.peers/peer_bench.py --out=$OUT   # one H100 / H200

1. The peers' measurements come first, in a child process, so that torch and JAX never hold
   GPU memory at the same time: the functions of `../shared/peers/peer_bench.py` for
   open_clip ViT-B/16 with the sigmoid loss and torchvision ResNet-50 SimCLR 2x224 (bf16
   autocast, batch 256), torch.compile first, since the targets are set against it, then
   eager. The script's own softmax-CLIP runs are skipped: no comparison uses them.
2. `tools/benchmark.py` then times our steps for the same work (workloads siglip_b16 and
   simclr_r50: batch 256, bf16, synthetic device-resident batches).
3. OUT/gpu_check.json holds both results and the ratios; the table compares our images/s with
   the peer's compiled and eager ones against the targets (ViT-B/16 SigLIP >= 1.3x open_clip
   + torch.compile, ResNet-50 SimCLR >= 1.2x torch.compile).

A short lease must still yield numbers: the peers are stopped after --peer_timeout_s, keeping
what they measured (OUT/peer_bench.json is rewritten after each measurement), and
gpu_check.json is rewritten after each of our workloads.

`--tiny` runs the same steps with test-sized models (any device), and `--peer_json` reads a
peer result instead of running the script: how the check itself is tested on a CPU.
"""
import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

# (our workload, the peer's result keys without the _eager / _compile suffix, target ratio)
COMPARISONS = (
    ("siglip_b16", "open_clip_vitb16_sigmoid_b256", 1.3),
    ("simclr_r50", "torch_simclr_r50_b256x2", 1.2),
)
# The peers' runs, in order: (result key as peer_bench.py names it, its function, arguments).
PEER_RUNS = (
    ("open_clip_vitb16_sigmoid_b256_compile", "clip_bench", ("sigmoid", 256, True)),
    ("torch_simclr_r50_b256x2_compile", "simclr_bench", (256, True)),
    ("open_clip_vitb16_sigmoid_b256_eager", "clip_bench", ("sigmoid", 256, False)),
    ("torch_simclr_r50_b256x2_eager", "simclr_bench", (256, False)),
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Test-sized variants of the workloads: the same recipes and code paths, small models, one
# device.
TINY = {
    "siglip_b16": {"batch_size": 8, "mesh": (("data", 1),), "data.image_size": 32, "augment.crop_size": 32,
                   "model.image.variant": "Ti/16", "model.image.depth": 1,
                   "model.text.depth": 1, "model.text.width": 64, "model.text.heads": 2,
                   "model.embed_dim": 32, "text.tokenizer.length": 16},
    "simclr_r50": {"batch_size": 8, "mesh": (("data", 1),), "data.image_size": 32, "augment.crop_size": 32,
                   "model.depth": 10, "model.width": 8, "model.head_hidden_dims": (32,),
                   "model.head_dim": 16},
}


def _remove_stale(path: str):
  """An earlier run's file must not pass for this one's."""
  if os.path.exists(path):
    os.remove(path)


def _write_json(path: str, obj):
  """Written whole or not at all: a run killed mid-write leaves the previous version."""
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(path + ".tmp", path)


def peer_child(script: str, out: str):
  """In the child process: PEER_RUNS with the functions of the peers' `script`, set up as its
  main() sets torch up; OUT/peer_bench.json after each."""
  spec = importlib.util.spec_from_file_location("peer_bench", script)
  peers = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(peers)
  import torch
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True
  results = {"versions": peers.versions()}
  for key, name, args in PEER_RUNS:
    try:
      results[key] = getattr(peers, name)(*args)
    except Exception as e:  # noqa: BLE001 -- recorded, as the script itself does.
      results[key] = repr(e)
    print(key, results[key], flush=True)
    _write_json(os.path.join(out, "peer_bench.json"), results)


def _interrupt(signum, frame):
  raise KeyboardInterrupt(f"signal {signum}")


def run_peers(script: str, out: str, timeout_s: float) -> dict:
  """The peers' results: `peer_child` in a process group of its own (torch.compile starts
  workers). Past `timeout_s`, on a failure, or when this process is interrupted or terminated,
  the group is killed and what it had written is kept; unfinished runs are named under
  "peers_note"."""
  env = dict(os.environ, OUT=out, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  path = os.path.join(out, "peer_bench.json")
  _remove_stale(path)
  code = ("import sys; sys.path.insert(0, sys.argv[3]); from tools import gpu_check; "
          "gpu_check.peer_child(sys.argv[1], sys.argv[2])")
  previous = signal.signal(signal.SIGTERM, _interrupt)
  proc = subprocess.Popen([sys.executable, "-c", code, script, out, ROOT], env=env,
                          start_new_session=True)
  try:
    status, note = proc.wait(timeout=timeout_s), None
  except subprocess.TimeoutExpired:
    status, note = None, f"stopped after {timeout_s:.0f} s (--peer_timeout_s)"
  finally:  # Whatever is left of the group (compile workers) would hold GPU memory.
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    proc.wait()
    signal.signal(signal.SIGTERM, previous)
  if status:
    note = f"exited with status {status}"
  peers = {}
  if os.path.exists(path):
    with open(path) as f:
      peers = json.load(f)
  missing = [key for key, _, _ in PEER_RUNS if key not in peers]
  if note or missing:
    peers["peers_note"] = f"{script}: {note or 'finished'}; not measured: {missing or 'none'}"
    print(peers["peers_note"], file=sys.stderr, flush=True)
  return peers


def run_ours(tiny: bool, steps: int, warmup: int):
  """(workload, benchmark.run result) of each workload, as each is measured."""
  from tools import benchmark
  for workload, _, _ in COMPARISONS:
    overrides = [f"{k}={v!r}" for k, v in TINY[workload].items()] if tiny else []
    config = benchmark.load_config(workload=workload, overrides=overrides)
    result = benchmark.run(config, "synthetic", steps, warmup)
    print(benchmark.table(result), file=sys.stderr, flush=True)
    yield workload, result


def ratios(ours: dict, peers: dict) -> list:
  """One row per comparison (of the workloads measured so far): our images/s over the
  peer's, compiled and eager."""
  rows = []
  for workload, peer, target in COMPARISONS:
    if workload not in ours:
      continue
    row = {"workload": workload, "peer": peer, "target": target,
           "ours_img_per_s": ours[workload]["images_per_s"], "ours_mfu": ours[workload]["mfu"]}
    for mode in ("compile", "eager"):
      result = peers.get(f"{peer}_{mode}")
      value = result.get("img_per_s") if isinstance(result, dict) else None
      row[f"peer_{mode}_img_per_s"] = value
      row[f"ratio_{mode}"] = row["ours_img_per_s"] / value if value else None
    # None: no compiled peer result to compare with (not measured, or it failed).
    row["meets_target"] = (None if row["ratio_compile"] is None else
                           bool(row["ratio_compile"] >= target))
    rows.append(row)
  return rows


def table(rows: list, device: str) -> str:
  fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
  verdict = {True: "met", False: "NOT met", None: "no peer result"}
  lines = [f"On {device}: our images/s over the peer's (targets against torch.compile)",
           "| workload | ours img/s | peer compiled | peer eager | ours / compiled | ours / eager "
           "| target |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['workload']} | {r['ours_img_per_s']:,.0f} | "
        f"{fmt(r['peer_compile_img_per_s'], ',.0f')} | {fmt(r['peer_eager_img_per_s'], ',.0f')} "
        f"| {fmt(r['ratio_compile'], '.2f')}x | {fmt(r['ratio_eager'], '.2f')}x | "
        f">= {r['target']}x: {verdict[r['meets_target']]} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--peer_bench", default="../shared/peers/peer_bench.py",
                      help="the peers' script (copy it into the tree to carry it to a device)")
  parser.add_argument("--peer_json", help="a peer result to read instead of running the script")
  parser.add_argument("--out", default=os.environ.get("OUT", "."), help="where the JSON goes")
  parser.add_argument("--tiny", action="store_true", help="test-sized models (CPU tests)")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--peer_timeout_s", type=float, default=360.0,
                      help="stop the peers' script after this long and keep what it measured "
                           "(the whole check must fit one device call)")
  args = parser.parse_args(argv)
  # JAX must not take the GPU's memory up front: torch ran there first and may still hold some.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  os.makedirs(args.out, exist_ok=True)
  _remove_stale(os.path.join(args.out, "gpu_check.json"))
  start = time.time()
  if args.peer_json:
    with open(args.peer_json) as f:
      peers = json.load(f)
  else:
    if not os.path.isfile(args.peer_bench):
      parser.error(f"--peer_bench={args.peer_bench} does not exist; copy "
                   "../shared/peers/peer_bench.py into the tree (e.g. .peers/) and name it, or "
                   "give --peer_json.")
    peers = run_peers(args.peer_bench, args.out, args.peer_timeout_s)
  import jax
  device = jax.devices()[0].device_kind

  ours = {}
  for workload, measured in run_ours(args.tiny, args.steps, args.warmup):
    ours[workload] = measured
    # Rewritten after each workload: a run cut off later keeps what it measured.
    result = {"device": device, "jax": jax.__version__, "tiny": args.tiny,
              "ratios": ratios(ours, peers), "ours": ours, "peers": peers,
              "wall_s": time.time() - start}
    _write_json(os.path.join(args.out, "gpu_check.json"), result)
  print(table(result["ratios"], device))
  return result


if __name__ == "__main__":
  main()
