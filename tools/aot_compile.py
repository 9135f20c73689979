"""Ahead-of-time compilation of the train step for a TPU topology, on any host (a CPU will do).

  python -m tools.aot_compile --config=configs/siglip_b16.py --topology=v5e:16x16 \\
      --set loss.impl=ring --set model.remat=full --json=siglip_v5e256.json
  python -m tools.aot_compile --config=configs/simclr_imagenet.py --topology=v4:4x4x2 --max_batch

Needs libtpu (`pip install -e '.[tpu]'`); no TPU. It builds exactly the step that training
runs (`run.setup`: the same config checks, mesh, shardings and donation) on the topology's
abstract chips and compiles it without running it. Per chip it reports what XLA's compiled
program says: argument, output, temporary and aliased (donated) bytes, their total against
the chip's HBM, FLOPs and bytes accessed; then a roofline step time,
max(FLOPs / bf16 peak, bytes / HBM bandwidth), from the chip's data sheet, and the images/s
that implies. FLOPs are the larger of XLA's count and the matmul count of the step's jaxpr
(tools/benchmark.py) over the chips: XLA counts a loop body once, so when the step loops
(model.scan_layers, model.block_chunks, micro_batches, the ring loss) its FLOPs and bytes see
one iteration; the jaxpr count multiplies by the trip count, and the memory term is then a
lower bound (reported as such).
`--max_batch` bisects over compiles for the largest global batch that fits.

A recipe that reads its text tokenizer from a file compiles without the file: the token
embedding gets `--vocab_size` rows (default: SentencePiece 32,000, as big_vision's c4_en
model; CLIP's BPE 49,408).
"""
import argparse
import dataclasses
import os
import re
import sys
import time

import jax

# Per chip, from the vendor's data sheets: HBM, dense bf16 peak, HBM bandwidth, and whether
# the runtime joins the chip's two TensorCores into one device (megacore).
@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_gib: float
  peak_tflops: float
  hbm_gbps: float
  single_host: str  # A one-host accelerator type, which libtpu asks for as it loads.
  megacore: bool = False


CHIPS = {
    "v4": Chip(32, 275, 1200, "v4-8", megacore=True),
    "v5e": Chip(16, 197, 819, "v5litepod-4"),
    "v5p": Chip(95, 459, 2765, "v5p-8", megacore=True),
    "v6e": Chip(32, 918, 1640, "v6e-4"),
}
TOKENIZER_VOCAB = {"sentencepiece": 32_000, "clip_bpe": 49_408}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


def topology_devices(topology: str) -> tuple[Chip, list]:
  """The chip and the compile-only devices of a topology name such as "v5e:16x16"."""
  match = _TOPOLOGY.match(topology)
  if not match:
    raise ValueError(f"--topology={topology!r}: must be GENERATION:SHAPE with a generation of "
                     f"{sorted(CHIPS)} and the chips along each axis, e.g. v5e:16x16 "
                     "(v5e-256), v4:4x4x2 (v4-64), v5p:4x4x4, v6e:8x8.")
  chip = CHIPS[match.group(1)]
  # Compile-only: no TPU is opened, so processes need not take libtpu's one-process lock, nor
  # ask a metadata server for TPU hosts that are not there (which fills the console with
  # warnings). The slice's shape comes from the topology name alone.
  # Set only while libtpu loads: child processes of the caller must not inherit them.
  quiet = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_SKIP_MDS_QUERY": "1",
           "TPU_WORKER_HOSTNAMES": "localhost", "TPU_ACCELERATOR_TYPE": chip.single_host}
  quiet = {k: v for k, v in quiet.items() if k not in os.environ}
  from jax.experimental import topologies
  os.environ.update(quiet)
  try:
    devices = topologies.get_topology_desc(
        topology_name=topology, platform="tpu",
        **(dict(chip_config_name="megacore") if chip.megacore else {})).devices
  except RuntimeError as e:
    text = str(e).splitlines()[0][:300]
    if "not installed" in text:
      raise RuntimeError(f"Compiling for TPU needs libtpu ({text}): pip install -e '.[tpu]' "
                         "(or pip install 'jax[tpu]').") from None
    raise ValueError(f"--topology={topology!r} is not a slice libtpu can build ({text}); a "
                     "v5e/v6e slice is a 2-D grid of whole hosts (2x2, 2x4, 4x4, ..., 16x16), "
                     "a v4/v5p slice a 3-D one (2x2x1, 2x2x2, 4x4x4, ...).") from None
  finally:
    for key in quiet:
      os.environ.pop(key)
  return chip, list(devices)


class _VocabOnly:
  """Stands in for a tokenizer whose file is absent: only the shapes it gives the model."""

  def __init__(self, length: int, vocab_size: int):
    self.length, self.vocab_size, self.pad_id, self.eos_id = length, vocab_size, 0, 1


def _tokenizer(config, vocab_size):
  cfg = config.get("text", {}).get("tokenizer")
  if not cfg or cfg.get("name", "bytes") == "bytes" or (
      cfg.get("path") and vocab_size is None):
    return None  # The run's own (the file is read if the recipe names one).
  return _VocabOnly(cfg.length, vocab_size or TOKENIZER_VOCAB[cfg.name])


def compile_step(config, topology: str, vocab_size: int | None = None) -> dict:
  """Compiles `config`'s train step for `topology`; returns the per-chip figures."""
  from big_contrast import methods
  from big_contrast import run as run_lib
  from input_pipeline import sources
  from tools import benchmark

  chip, devices = topology_devices(topology)
  tokenizer = (_tokenizer(config, vocab_size)
               if methods.METHODS.get(config.method).data == sources.IMAGE_TEXT else None)
  try:
    run = run_lib.setup(config, devices=devices, train_size=100 * config.batch_size,
                        tokenizer=tokenizer)
  except ValueError as e:
    raise ValueError(f"{e} (--topology={topology}: {len(devices)} chips)") from None
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       run.abstract, run.state_sharding)
  batch = run.batch_shapes()
  result = {
      "method": config.method, "topology": topology, "chips": run.mesh.size,
      "device_kind": run.mesh.devices.flat[0].device_kind, "mesh": dict(run.mesh.shape),
      "batch_size": config.batch_size, "batch_per_chip": config.batch_size / run.mesh.size,
      "params": int(sum(x.size for x in jax.tree.leaves(run.abstract["params"]))),
      "jax": jax.__version__, "hbm_bytes": chip.hbm_gib * 2**30}
  # The arguments' own shard sizes, before TPU tile padding.
  per_chip = {"argument_bytes_unpadded": _shard_bytes((state, batch))}
  start = time.perf_counter()
  try:
    compiled = run.train_step.lower(state, batch).compile()
  except jax.errors.JaxRuntimeError as e:
    # XLA:TPU refuses, as it compiles, a program whose buffers exceed the chip's usable HBM.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    message = (str(e).partition("RESOURCE_EXHAUSTED")[2].lstrip(": ").splitlines() or [""])[0]
    required = re.search(r"required for HLO temporaries \(([\d.]+)G\)", message)
    per_chip["temp_bytes"] = float(required.group(1)) * 2**30 if required else None
    return dict(result, compile_s=time.perf_counter() - start, fits=False, error=message,
                per_chip=dict(per_chip, total_bytes=None), roofline=None)
  compile_s = time.perf_counter() - start
  # XLA's cost analysis counts a loop body once (scan_layers runs the blocks as one); the
  # jaxpr count multiplies scans by their length. Split evenly over the chips.
  cost = benchmark.step_flops(run.train_step, compiled, state, batch)
  flops, bytes_accessed = cost.flops, cost.bytes_accessed
  matmul_flops = cost.matmul_flops / run.mesh.size
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes +
           mem.temp_size_in_bytes)
  compute_s = max(flops, matmul_flops) / (chip.peak_tflops * 1e12)
  step_s = max(compute_s, bytes_accessed / (chip.hbm_gbps * 1e9))
  per_chip.update(
      argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
      alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
      total_bytes=total, flops=flops, matmul_flops=matmul_flops, bytes_accessed=bytes_accessed)
  return dict(result, compile_s=compile_s, per_chip=per_chip,
              fits=total <= chip.hbm_gib * 2**30,
              roofline={"peak_tflops": chip.peak_tflops, "hbm_gbps": chip.hbm_gbps,
                        "step_s": step_s,
                        "bound": "compute" if compute_s >= step_s else "memory",
                        "memory_term_lower_bound": cost.loops,
                        "images_per_s": config.batch_size / step_s if step_s else None})


def _shard_bytes(tree) -> int:
  """Bytes one device holds of sharded ShapeDtypeStructs."""
  from big_contrast import sharding
  return sharding.bytes_per_device(tree, jax.tree.map(lambda x: x.sharding, tree))


def max_batch(config, topology: str, vocab_size=None, limit: int = 2**20,
              log=lambda text: None, tolerance: float = 0.0) -> dict:
  """The largest global batch whose step fits the chips' HBM: doubling from
  `config.batch_size`, then bisection, in multiples of the batch the config can split
  (data-parallel shards x micro-batches x block slices per device), until the
  bracket is one multiple wide (or `tolerance` of the batch that fits, to save compiles).
  A batch the config refuses (e.g. a queue size it must divide) counts as not fitting.
  Returns {"max_batch": N or 0, "tried": [(batch, fits, total bytes per chip)],
  "largest": the result of N}."""
  from big_contrast import run as run_lib
  from big_contrast import sharding
  from configs import common

  _, devices = topology_devices(topology)
  step = run_lib.batch_multiple(config, sharding.make_mesh(config.mesh, devices))
  tried, best = [], None

  def fits(batch: int) -> bool:
    nonlocal best
    try:
      result = compile_step(common.override(config.copy_and_resolve_references(),
                                            {"batch_size": batch}), topology, vocab_size)
    except ValueError as e:  # A batch the config refuses (a queue, micro-batches, BN groups).
      tried.append((batch, False, None))
      log(f"batch {batch}: refused by the config ({str(e).splitlines()[0]})")
      return False
    total = result["per_chip"]["total_bytes"]
    tried.append((batch, result["fits"], total))
    log(f"batch {batch}: " + (f"{total / 2**30:.2f} GiB per chip, " if total else "") +
        f"{'fits' if result['fits'] else 'does not fit'} ({result['compile_s']:.0f} s)")
    if result["fits"] and (best is None or batch > best["batch_size"]):
      best = result
    return result["fits"]

  top = max(step, limit // step * step)
  lo, hi = 0, min(top, max(step, config.batch_size // step * step))  # lo fits (0: none), hi ?
  while fits(hi):
    if hi == top:
      return {"max_batch": hi, "limit_reached": True, "tried": tried, "largest": best}
    lo, hi = hi, min(hi * 2, top)
  while hi - lo > max(step, tolerance * lo):
    mid = (lo + hi) // 2 // step * step
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return {"max_batch": lo, "limit_reached": False, "tried": tried, "largest": best}


def table(result: dict) -> str:
  m = result["per_chip"]
  gib = lambda b: f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"
  head = (f"{result['method']} batch {result['batch_size']} on {result['topology']} "
          f"({result['chips']} chips, mesh {result['mesh']})")
  advice = [] if result["fits"] else [
      "  To fit: a smaller config.batch_size (--max_batch finds the largest), "
      "model.remat=full or dots, loss.impl=ring (SigLIP), micro_batches=K, FSDP "
      "(sharding.rules=('fsdp',) with an fsdp mesh axis), or a larger slice."]
  if "error" in result:
    return "\n".join([head, f"  DOES NOT FIT: {result['error']}"] + advice)
  rows = [("per chip: arguments", gib(m["argument_bytes"])),
          ("          outputs (donated)", f"{gib(m['output_bytes'])} ({gib(m['alias_bytes'])} "
                                           "aliased)"),
          ("          temporaries", gib(m["temp_bytes"])),
          ("          total / HBM", f"{gib(m['total_bytes'])} / {gib(result['hbm_bytes'])}: "
                                   f"{'fits' if result['fits'] else 'DOES NOT FIT'}"),
          ("          FLOPs: XLA, matmul", f"{m['flops']:.3e}, {m['matmul_flops']:.3e}"),
          ("          bytes accessed", f"{m['bytes_accessed']:.3e}"),
          ("roofline step", f"{result['roofline']['step_s'] * 1e3:.1f} ms "
                            f"({result['roofline']['bound']}-bound" +
                            ("; memory term a lower bound: XLA counts a loop's bytes once)"
                             if result["roofline"].get("memory_term_lower_bound") else ")")),
          ("roofline images/s", f"{result['roofline']['images_per_s'] or 0:,.0f}"),
          ("compile", f"{result['compile_s']:.1f} s")]
  width = max(len(k) for k, _ in rows)
  return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows] + advice)


def main(argv=None):
  from tools import benchmark
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="recipe file, e.g. configs/siglip_b16.py")
  parser.add_argument("--topology", required=True,
                      help="GENERATION:SHAPE, e.g. v5e:16x16, v4:4x4x2, v5p:4x4x4, v6e:8x8")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set model.remat=full")
  parser.add_argument("--vocab_size", type=int,
                      help="token embedding rows when the tokenizer's file is absent")
  parser.add_argument("--max_batch", action="store_true",
                      help="bisect for the largest global batch that fits")
  parser.add_argument("--max_batch_limit", type=int, default=2**20)
  parser.add_argument("--max_batch_tolerance", type=float, default=0.0,
                      help="stop bisecting once the bracket is this fraction of the batch")
  parser.add_argument("--json", help="write the JSON result here (default: stdout)")
  args = parser.parse_args(argv)
  config = benchmark.load_config(args.config, overrides=args.set)
  log = lambda text: print(text, file=sys.stderr, flush=True)
  if args.max_batch:
    result = max_batch(config, args.topology, args.vocab_size, args.max_batch_limit, log,
                       args.max_batch_tolerance)
    summary = (f"largest global batch that fits on {args.topology}: {result['max_batch']}" +
               (" (the limit; raise --max_batch_limit)" if result["limit_reached"] else ""))
  else:
    result = compile_step(config, args.topology, args.vocab_size)
    summary = table(result)
  benchmark.emit(result, args.json, summary)
  return result


if __name__ == "__main__":
  from big_contrast import cli
  cli.run_tool(main)
