"""Evaluate a checkpoint, or imported weights, without training:

  python -m big_contrast.evaluate --workdir=DIR [--step=N] [--evaluators=knn,linear_eval] \
      [--config.KEY=VALUE ...]
  python -m big_contrast.evaluate --config=configs/<recipe>.py --workdir=DIR \
      --config.init_from.torch.path=weights.safetensors ...

The run's config comes from DIR/config.json (or --config, a recipe file); `--config.KEY`
overrides it (where the data is, evaluator settings). The step's train state is restored
read-only and checked against its digest, so a run still training in DIR is not disturbed.
A workdir without checkpoints evaluates the state `config.init_from` builds (PyTorch
weights through init_from.torch, or another run's). The results are appended to DIR's
metrics.jsonl and TensorBoard (at the step evaluated) and written to
DIR/evaluations/step_<N>.json.
"""
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
from ml_collections import config_flags

from big_contrast import checkpoint
from big_contrast import cli
from big_contrast import console
from big_contrast import init_from
from big_contrast import metrics
from big_contrast import run as run_lib
from big_contrast import run_config



def evaluate_workdir(config, workdir: str, step: int | None = None) -> dict:
  """{"step", "metrics": {"eval/<name>": value}, "file"} of `config.eval.evaluators` on
  checkpoint `step` of `workdir` (default the latest), or, where it has none, on the state
  `config.init_from` builds. Everything the config gets wrong fails before any compile."""
  run = run_lib.setup(config)
  reader = checkpoint.Checkpointer.reader(workdir) if os.path.isdir(
      os.path.join(workdir, "checkpoints")) else None
  steps = reader.all_steps() if reader else []
  if steps and step is None:
    step = steps[-1]
    if jax.process_count() > 1:  # A save in progress may show to some processes only.
      step = int(multihost_utils.broadcast_one_to_all(np.int32(step)))
  if not steps and (step or not init_from.requested(config.get("init_from"))):
    raise ValueError(f"{workdir} has no checkpoints to evaluate: give the workdir of a "
                     "training run, or set config.init_from (e.g. "
                     "--config.init_from.torch.path=WEIGHTS) to evaluate imported weights.")
  _check_writable(workdir)
  if steps:
    try:
      ts = reader.restore(step, checkpoint.abstract_like(run.abstract, run.state_sharding))
    except checkpoint.CorruptCheckpoint as e:
      raise checkpoint.CorruptCheckpoint(
          f"{e} Nothing was evaluated; {checkpoint.earlier_step(steps, step, '--step')}."
      ) from None
    logging.info("Evaluating checkpoint %d of %s.", step, reader.directory)
  else:
    step, ts = 0, run.initial_state()
  started = time.time()
  values = run.evaluate(ts)
  result = dict(step=step, metrics=values, evaluators=list(config.eval.evaluators),
                seconds=time.time() - started, time=time.strftime("%Y-%m-%d %H:%M:%S"))
  if jax.process_index() == 0:
    result["file"] = _record(workdir, step, result, config)
  logger = metrics.MetricLogger(workdir, total_steps=0, resume_step=None, config=config)
  logger.evaluation(step, values, config)
  logger.close()
  return result


def _check_writable(workdir):
  """The results go into the workdir: one that cannot take them is refused before the
  checkpoint is read and anything compiles, not after the evaluation."""
  problem = ""
  if jax.process_index() == 0:  # Which writes them; every process learns the answer.
    folder = os.path.join(workdir, "evaluations")
    try:
      os.makedirs(folder, exist_ok=True)
      probe = os.path.join(folder, f".writable.{os.getpid()}")
      with open(probe, "w"):
        pass
      os.remove(probe)
    except OSError as e:
      problem = e.strerror or str(e)
  if jax.process_count() > 1:
    refused = multihost_utils.broadcast_one_to_all(np.int32(bool(problem)))
    problem = problem or ("on process 0" if int(refused) else "")
  if problem:
    raise PermissionError(
        f"--workdir={workdir!r} cannot take the results ({problem}): they are written to "
        "its evaluations/ and metrics.jsonl. Copy its config.json and checkpoints/ to a "
        "directory this user can write and evaluate that.")


def _record(workdir, step, result, config) -> str:
  """Adds `result` to DIR/evaluations/step_<step>.json: every evaluation of the step is kept,
  with its config, and "metrics" holds the latest value of each metric."""
  path = os.path.join(workdir, "evaluations", f"step_{step}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  record = {"step": step, "metrics": {}, "evaluations": []}
  if os.path.exists(path):
    try:
      with open(path) as f:
        record = json.load(f)
    except ValueError:  # Damaged outside this code (it writes atomically): keep it aside.
      os.replace(path, path + ".corrupt")
      logging.warning("%s was not valid JSON; kept as %s.corrupt.", path, path)
  record["metrics"].update(result["metrics"])
  record["evaluations"].append({**result, "config": json.loads(config.to_json_best_effort())})
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(path + ".tmp", path)
  return path


def _config_flag(argv):
  """--config: the recipe file given, else the workdir's saved config (read before the flags
  are parsed, so that --config.KEY=VALUE overrides either)."""
  if cli.flag_values(argv, "config"):
    return config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py).")
  workdirs = cli.flag_values(argv, "workdir")
  if not workdirs:
    sys.stderr.write("FATAL Flags parsing error: give --workdir=DIR (a training run's "
                     "workdir), and --config=RECIPE to evaluate imported weights.\n")
    sys.exit(2)
  try:
    saved = run_config.read_saved(workdirs[-1])
  except ValueError as e:
    sys.stderr.write(f"FATAL {e}\n")
    sys.exit(2)
  try:  # The --config.KEY overrides are read here, from argv.
    return config_flags.DEFINE_config_dict("config", saved, "The run's config.json.")
  except (AttributeError, KeyError) as e:
    problems = cli.override_problems(argv, saved) or [f"a --config.KEY override failed: {e}"]
    sys.stderr.write("FATAL Flags parsing error: " + "\n".join(problems) + "\n")
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()
  cli.init_distributed()
  config = _FLAGS["config"].value
  if _FLAGS["evaluators"].value is not None:
    config.unlock()
    config.eval.evaluators = tuple(_FLAGS["evaluators"].value)
  try:
    result = evaluate_workdir(config, _FLAGS["workdir"].value, _FLAGS["step"].value)
  except (*cli.USER_ERRORS, checkpoint.CorruptCheckpoint) as e:
    sys.exit(f"FATAL {type(e).__name__}: {e}")
  if jax.process_index() == 0:
    shown = "  ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in result["metrics"].items())
    print(f"Step {result['step']}: {shown}\n  results  {result['file']}", flush=True)


_FLAGS = {}


def run_main():
  """The command line. Its flags are defined here, not at import: big_contrast.main defines
  --config and --workdir too, and a process may import both modules."""
  _FLAGS.update(
      config=_config_flag(sys.argv),
      workdir=flags.DEFINE_string("workdir", None, "The run's workdir (results go there too)."),
      step=flags.DEFINE_integer("step", None, "The checkpoint step (default: the latest)."),
      evaluators=flags.DEFINE_list("evaluators", None, "Evaluators to run (default: the "
                                   "config's eval.evaluators)."))
  flags.mark_flags_as_required(["workdir"])
  app.run(main, flags_parser=cli.parse_flags)
