"""What the command-line entry points show on the console.

The console gets this project's own INFO lines without absl's prefix, and everyone's warnings
and errors marked as such; the INFO chatter of libraries (orbax's saves, jax's backend probes)
goes only to the run's log file (train.py `_log_file`), which keeps every record with its
time and level.
"""
import logging as py_logging
import os

from absl import logging

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # The repository.
_OURS = tuple(os.path.join(_ROOT, d) + os.sep for d in ("big_contrast", "input_pipeline",
                                                        "tools", "configs"))


class _Formatter(py_logging.Formatter):

  def format(self, record):
    text = super().format(record)
    return text if record.levelno < py_logging.WARNING else f"{record.levelname}: {text}"


def _shown(record) -> bool:
  return record.levelno >= py_logging.WARNING or record.pathname.startswith(_OURS)


def skip_absent_tpu(env=os.environ):
  """On a host without TPU chips, keeps jax from loading libtpu (installed by jax[tpu] for
  compiling ahead of time) and printing its failed search for chips. JAX_PLATFORMS, when
  set, decides instead; hosts with an NVIDIA or AMD GPU are left to jax's own choice."""
  if env.get("JAX_PLATFORMS") is not None:
    return
  import jax
  try:
    from jax._src import hardware_utils  # jax's own probe, which reads no device.
    if (hardware_utils.num_available_tpu_chips_and_device_id()[0] or
        hardware_utils.has_visible_nvidia_gpu() or hardware_utils.num_available_amd_gpus()):
      return
  except (ImportError, AttributeError, OSError):  # Another jax: leave the choice to it.
    return
  jax.config.update("jax_platforms", "cpu")


def setup():
  """Quiet console for a command run from the shell; call first in its main()."""
  skip_absent_tpu()
  handler = logging.get_absl_handler()
  handler.setFormatter(_Formatter("%(message)s"))
  handler.addFilter(_shown)
