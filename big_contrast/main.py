"""Entry point: python -m big_contrast.main --config=configs/<recipe>.py --workdir=DIR."""
import logging as py_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from big_contrast import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and metrics go here.")
flags.mark_flags_as_required(["config", "workdir"])


def summary(results: dict) -> str:
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
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(summary(results), flush=True)


if __name__ == "__main__":
  app.run(main)
