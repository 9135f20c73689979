"""Training-step benchmark: images/s, step time, FLOPs and MFU, memory, compile time.

  python -m tools.benchmark --config=configs/siglip_b16.py --batch_size=256 --steps=50
  python -m tools.benchmark --workload=simclr_r50 --json=out.json
  python -m tools.benchmark --config=configs/simclr_digits.py --data=pipeline --steps=20

It builds exactly what `train.train_and_evaluate` runs (`run.setup`: the same jitted,
sharded, donated step) and times it:
  --data=synthetic  device-resident random batches of the config's shapes: the device alone;
  --data=pipeline   real batches from the grain pipeline, timed end to end, plus the host
                    pipeline alone (images/s it can deliver) so that a host bottleneck shows.
Step time is the median over `--steps` steps after `--warmup`, each synchronised with
block_until_ready. FLOPs per step are counted two ways and both reported:
  xla_flops       XLA's cost analysis of the compiled step (all ops, as XLA counts them);
  matmul_flops    an analytic count from the step's jaxpr: 2·M·N·K for every dot_general and
                  the same for every convolution, forward and backward, scans multiplied by
                  their length. MFU = matmul_flops / step time / peak (--peak_tflops, or the
                  known dense bf16 peak of the GPU).
Memory: the compiled step's memory analysis (arguments, outputs, temporaries) and, on GPU,
the device's peak bytes in use. Output: one JSON object (stdout or --json) and a table.
"""
import argparse
import importlib
import json
import math
import statistics
import sys
import time
from typing import NamedTuple

import jax
import jax.extend.core  # ClosedJaxpr, Jaxpr: walked by jaxpr_flops
import numpy as np

# Workloads of the GPU comparison with the PyTorch peers: recipe + overrides.
# The peers run without gradient checkpointing, so neither do these (the recipe's remat="full"
# is for its 32,768 batch).
WORKLOADS = {
    "siglip_b16": ("siglip_b16", {"batch_size": 256, "loss.impl": "full", "model.remat": "none",
                                  "text.tokenizer.name": "bytes"}),
    "clip_b16": ("lit_b16", {"batch_size": 256, "optimizer.frozen": (),
                             "init_from.workdir": "", "text.tokenizer.name": "bytes"}),
    "simclr_r50": ("simclr_imagenet", {"batch_size": 256}),
}
# Dense bf16 peak TFLOP/s by device kind (vendor data sheets, SXM parts, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _shape_size(shape):
  return math.prod(int(d) for d in shape)


def jaxpr_flops(jaxpr) -> float:
  """2·M·N·K of every dot_general and convolution in a jaxpr, sub-jaxprs included.

  Scans count `length` times, conds their most expensive branch, while loops once (their
  trip count is not static).
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = math.prod(lhs[d] for d in lhs_contract)
      total += 2.0 * _shape_size(eqn.outvars[0].aval.shape) * k
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    if name == "cond":  # One branch runs: count the most expensive.
      total += max(jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
      continue
    multiplier = eqn.params.get("length", 1) if name == "scan" else 1
    for sub in _sub_jaxprs(eqn.params):
      total += multiplier * jaxpr_flops(sub)
  return total


class StepCost(NamedTuple):
  """What a compiled step costs: XLA's FLOPs and bytes accessed (per device, a loop body
  seen once), the jaxpr's matmul FLOPs (the whole global step, scans times their length) and
  `loops`: whether the step loops (has_loops), which makes XLA's bytes a lower bound."""
  flops: float
  bytes_accessed: float
  matmul_flops: float
  loops: bool


def step_flops(step_fn, compiled, *args) -> StepCost:
  """The StepCost of a jitted step compiled for `args`."""
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  jaxpr = jax.make_jaxpr(step_fn)(*args).jaxpr
  return StepCost(float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                  jaxpr_flops(jaxpr), has_loops(jaxpr))


def has_loops(jaxpr) -> bool:
  """Whether a jaxpr, sub-jaxprs included, runs a body more than once: a scan longer than one
  (scan_layers, block_chunks, micro_batches, the ring loss) or a while loop."""
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "while" or (name == "scan" and eqn.params["length"] > 1):
      return True
    if any(has_loops(sub) for sub in _sub_jaxprs(eqn.params)):
      return True
  return False


def _conv_flops(eqn) -> float:
  """2 × (output batch × out features × in features per group) × the (output, kernel) position
  pairs that read a real input element: padding and the holes of lhs dilation (backward
  convolutions) are not multiplications."""
  p = eqn.params
  lhs, rhs, out = (eqn.invars[0].aval.shape, eqn.invars[1].aval.shape,
                   eqn.outvars[0].aval.shape)
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  pairs = 1
  for d in range(len(lhs_spec) - 2):
    size, kernel, out_size = lhs[lhs_spec[2 + d]], rhs[rhs_spec[2 + d]], out[out_spec[2 + d]]
    lhs_dil, rhs_dil = p["lhs_dilation"][d], p["rhs_dilation"][d]
    pos = (np.arange(out_size)[:, None] * p["window_strides"][d] +
           np.arange(kernel)[None, :] * rhs_dil - p["padding"][d][0])
    pairs *= int(np.sum((pos >= 0) & (pos <= (size - 1) * lhs_dil) & (pos % lhs_dil == 0)))
  return 2.0 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * pairs


def _sub_jaxprs(params):
  for value in params.values():
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def load_config(config_path=None, workload=None, overrides=()):
  """A recipe (file path or workload name) with `key=value` overrides (values as Python)."""
  import ast
  from configs import common
  if workload:
    if workload not in WORKLOADS:
      raise ValueError(f"--workload={workload!r} is unknown; choose from {sorted(WORKLOADS)}.")
    recipe, preset = WORKLOADS[workload]
    config = common.override(importlib.import_module(f"configs.{recipe}").get_config(), preset)
  else:
    module = config_path.removesuffix(".py").replace("/", ".")
    config = importlib.import_module(module).get_config()
  parsed = {}
  for item in overrides:
    key, _, value = item.partition("=")
    try:
      parsed[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed[key] = value
  return common.override(config, parsed)


def synthetic_batch(run):
  """Random device-resident batch of the shapes training sees (`Run.batch_shapes`: uint8
  images or host-cropped views, labels, token ids of made-up captions)."""
  rng = np.random.default_rng(0)
  batch = {}
  for name, spec in run.batch_shapes().items():
    n = spec.shape[0]
    if name == "text":
      batch[name] = run.tokenizer.batch([f"a photo of item {i}" for i in range(n)])
    else:
      batch[name] = rng.integers(0, 10 if name == "label" else 256, spec.shape, spec.dtype)
  # Every process holds its rows, as the pipeline would deliver them.
  p, count = jax.process_index(), jax.process_count()
  local = {k: v[p * n // count:(p + 1) * n // count] for k, v in batch.items()}
  return run.global_batch(local)


def _time_steps(step_fn, state, batches, warmup, steps):
  times = []
  for i in range(warmup + steps):
    batch = next(batches)
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return state, times


def run(config, data="synthetic", steps=20, warmup=3, peak_tflops=None) -> dict:
  """Benchmarks the train step of `config`; returns the JSON-able results."""
  from big_contrast import run as run_lib

  # Synthetic data needs no dataset: the schedule assumes 100 steps per epoch.
  run = run_lib.setup(config, train_size=None if data == "pipeline" else
                      100 * config.batch_size)
  train_step, abstract = run.train_step, run.abstract
  s = config.data.image_size
  state = run.init_state()
  batch = synthetic_batch(run)

  start = time.perf_counter()
  lowered = train_step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  cost = step_flops(train_step, compiled, state, batch)
  mem = compiled.memory_analysis()

  result = {
      "method": config.method, "batch_size": config.batch_size, "image_size": s,
      # The devices the step runs on: the run's mesh, not every device the process sees.
      "devices": run.mesh.size, "device_kind": run.mesh.devices.flat[0].device_kind,
      "backend": jax.default_backend(), "jax": jax.__version__, "data": data,
      "compile_s": compile_s, "xla_flops_per_step": cost.flops,
      "matmul_flops_per_step": cost.matmul_flops,
      "params": int(sum(x.size for x in jax.tree.leaves(abstract["params"]))),
      "memory": {"argument_bytes": mem.argument_size_in_bytes,
                 "output_bytes": mem.output_size_in_bytes,
                 "temp_bytes": mem.temp_size_in_bytes,
                 "generated_code_bytes": mem.generated_code_size_in_bytes},
  }
  if data == "synthetic":
    batches = iter(lambda: batch, None)
  else:
    host = run.train_batches()
    it = host.iterate(0)
    start = time.perf_counter()
    for _ in range(steps):
      next(it)
    result["host_images_per_s"] = steps * config.batch_size / jax.process_count() / (
        time.perf_counter() - start)
    batches = (run.global_batch(b) for b in host.iterate(0))
  state, times = _time_steps(compiled, state, batches, warmup, steps)
  median = statistics.median(times)
  result.update(step_s_median=median, step_s_p10=float(np.percentile(times, 10)),
                step_s_p90=float(np.percentile(times, 90)), steps=steps, warmup=warmup,
                images_per_s=config.batch_size / median)
  peak = peak_tflops or next((v for k, v in PEAK_TFLOPS.items()
                              if k in result["device_kind"]), None)
  result["peak_tflops"] = peak
  result["mfu"] = (cost.matmul_flops / median / (peak * 1e12 * run.mesh.size)
                   if peak else None)
  stats = getattr(run.mesh.devices.flat[0], "memory_stats", lambda: None)()
  result["device_peak_bytes"] = (stats or {}).get("peak_bytes_in_use")
  return result


def table(result) -> str:
  rows = [("images/s", f"{result['images_per_s']:.1f}"),
          ("step time (median)", f"{result['step_s_median'] * 1e3:.1f} ms"),
          ("compile", f"{result['compile_s']:.1f} s"),
          ("matmul FLOPs/step (jaxpr)", f"{result['matmul_flops_per_step']:.3e}"),
          ("XLA FLOPs/step", f"{result['xla_flops_per_step']:.3e}"),
          ("MFU", "n/a (no --peak_tflops)" if result["mfu"] is None
           else f"{100 * result['mfu']:.1f}%"),
          ("temp memory", f"{result['memory']['temp_bytes'] / 2**20:.1f} MiB")]
  if "host_images_per_s" in result:
    rows.append(("host pipeline images/s", f"{result['host_images_per_s']:.1f}"))
  if result.get("device_peak_bytes"):
    rows.append(("device peak memory", f"{result['device_peak_bytes'] / 2**30:.2f} GiB"))
  width = max(len(k) for k, _ in rows)
  head = (f"{result['method']} batch {result['batch_size']} on {result['devices']}× "
          f"{result['device_kind']} ({result['data']} data)")
  return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", help="recipe file, e.g. configs/siglip_b16.py")
  parser.add_argument("--workload", help=f"named workload: {sorted(WORKLOADS)}")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. --set model.dtype=bfloat16")
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--data", choices=("synthetic", "pipeline"), default="synthetic")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--peak_tflops", type=float, help="per-device peak for MFU")
  parser.add_argument("--json", help="write the JSON result here (default: stdout)")
  args = parser.parse_args(argv)
  if bool(args.config) == bool(args.workload):
    parser.error("give exactly one of --config and --workload")
  overrides = list(args.set) + ([f"batch_size={args.batch_size}"] if args.batch_size else [])
  config = load_config(args.config, args.workload, overrides)
  result = run(config, args.data, args.steps, args.warmup, args.peak_tflops)
  emit(result, args.json, table(result))
  return result


def emit(result: dict, json_path: str | None, summary: str):
  """The tools' output: JSON to `json_path` (or stdout), the human summary to stderr."""
  text = json.dumps(result, indent=1)
  if json_path:
    with open(json_path, "w") as f:
      f.write(text)
  else:
    print(text)
  print(summary, file=sys.stderr)


if __name__ == "__main__":
  from big_contrast import cli
  cli.run_tool(main)
