"""Entry point: python -m big_contrast.main --config=configs/<recipe>.py --workdir=DIR.

Multi-host: run the same command in every process; big_contrast/cli.py says how a process
joins the run. Each process feeds its own rows of every global batch; only process 0 logs and
prints.
"""
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from big_contrast import cli
from big_contrast import console
from big_contrast import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and metrics go here.")
flags.mark_flags_as_required(["config", "workdir"])


def summary(results: dict) -> str:
  if results.get("preempted"):
    lines = [f"Stopped by {results['preempted']} at step {results['step']} after "
             f"{results['wall_time_s'] / 60:.1f} min with a checkpoint; run the same command "
             "to resume."]
  else:
    lines = [f"Finished {results['step']} steps in {results['wall_time_s'] / 60:.1f} min."]
    session = results.get("session", {})
    if session and session["steps"] < results["step"]:
      lines[0] = lines[0][:-1] + (f" over every session; this one resumed at step "
                                  f"{results['step'] - session['steps']} and ran "
                                  f"{session['steps']} steps in "
                                  f"{session['wall_time_s'] / 60:.1f} min.")
  if results.get("nonfinite_steps"):
    lines.append(f"  skipped      {results['nonfinite_steps']} of {results['step']} steps had a "
                 "non-finite loss or gradient and were not applied (config.nonfinite='skip')")
  if results.get("replaced_examples"):
    lines.append(f"  replaced     {results['replaced_examples']} training examples of this "
                 "session stood in for records that could not be read or decoded (each logged "
                 "with its key)")
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
  console.setup()
  cli.init_distributed()
  try:
    results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except cli.USER_ERRORS as e:
    sys.exit(cli.error_message(e, _WORKDIR.value))
  if jax.process_index() == 0:
    print(summary(results), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
