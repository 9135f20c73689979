"""Entry point: python -m big_contrast.main --config=configs/<recipe>.py --workdir=DIR.

Multi-host: run the same command in every process with either
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   (explicit), or
  --distributed                                                      (auto: SLURM, TPU pods,
                                                                      Open MPI; see
                                                                      jax.distributed.initialize)
Each process feeds its own rows of every global batch; only process 0 logs and prints.
"""
import logging as py_logging

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from big_contrast import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and metrics go here.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0 for jax.distributed (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "jax.distributed.initialize() with the cluster auto-detected "
                                 "(SLURM, TPU, Open MPI).")
flags.mark_flags_as_required(["config", "workdir"])


def init_distributed():
  """jax.distributed from the flags; a no-op for a single-process run."""
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit):
    if None in explicit:
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go "
                           "together; give all three (or --distributed to auto-detect).")
    if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
      raise app.UsageError(f"--process_id={_PROCESS_ID.value} must be in "
                           f"[0, --num_processes={_NUM_PROCESSES.value}).")
  elif not _DISTRIBUTED.value:
    return
  # Cross-process collectives on the CPU backend (tests, CPU clusters); GPUs/TPUs ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit[0]:
    jax.distributed.initialize(*explicit)
  else:
    jax.distributed.initialize()  # Auto-detected cluster.


def summary(results: dict) -> str:
  if results.get("preempted"):
    lines = [f"Stopped by {results['preempted']} at step {results['step']} after "
             f"{results['wall_time_s'] / 60:.1f} min with a checkpoint; run the same command "
             "to resume."]
  else:
    lines = [f"Finished {results['step']} steps in {results['wall_time_s'] / 60:.1f} min."]
  for when in ("init", "final"):
    if when in results:
      accs = "  ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in results[when].items())
      lines.append(f"  {'random init' if when == 'init' else 'trained':12s} {accs}")
  lines += [f"  checkpoints  {results['checkpoint_dir']}",
            f"  metrics      {results['metrics_file']}",
            f"  tensorboard  {results['tensorboard_dir']}"]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Orbax logs every save step at INFO; keep the console to progress lines.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or "orbax" not in r.pathname)
  init_distributed()
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(summary(results), flush=True)


if __name__ == "__main__":
  app.run(main)
