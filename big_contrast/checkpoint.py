"""Orbax checkpoints of the whole train state: save every N steps, keep K, auto-resume.

A checkpoint is written to a temporary directory and renamed when complete, so a process
killed mid-save leaves no partial step behind. A step that exists but cannot be restored
(truncated or corrupt files) is reported, moved to `workdir/checkpoints_corrupt/`, and the
previous one is used.
"""
import os
import shutil
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from big_contrast import settings

# `config.checkpoint`: save every `every_steps` steps (0: only at the end), keep the newest `keep`.
SETTINGS = dict(every_steps=settings.integer(1000, low=0), keep=settings.integer(3, low=1))


class Checkpointer:
  """The train state pytree {step, params, state, opt_state, rng, nonfinite_steps} in
  `workdir/checkpoints`.

  The data position is the step itself: batches are indexed by step (see
  input_pipeline/pipeline.py), so restoring the step restores the stream.
  """

  def __init__(self, workdir: str, every_steps: int, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.corrupt_directory = self.directory + "_corrupt"
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(
        self.directory,
        # cleanup_tmp_directories: a save cut short by a kill left only a temporary directory;
        # it is removed on the next start.
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self):
    return self._manager.latest_step()

  def restore_latest(self, abstract_state):
    """The latest restorable checkpoint, with the shapes, dtypes and shardings of
    `abstract_state`; None if there is none.

    Raises ValueError if a checkpoint holds another model's state (nothing is moved), or if
    checkpoints existed but none could be restored (all moved aside: no silent restart).
    """
    steps, want = sorted(self._manager.all_steps(), reverse=True), _shapes(abstract_state)
    for step in steps:
      try:
        shapes = _shapes(self._manager.item_metadata(step))
      except Exception as e:  # pylint: disable=broad-except
        self._quarantine(step, e)
        continue
      if shapes != want:
        raise ValueError(
            f"Checkpoint {step} in {self.directory} holds a train state of other shapes than "
            "this config's model and optimizer (e.g. another width, depth or optimizer); "
            "resume with the config that wrote it, or use a new --workdir.")
      try:
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # pylint: disable=broad-except
        # Orbax/TensorStore raise assorted types for missing, truncated or garbled files.
        self._quarantine(step, e)
    if steps:
      raise ValueError(f"None of the checkpoints {steps} in {self.directory} could be "
                       f"restored; they were moved to {self.corrupt_directory} (see the log for "
                       "each error). Run again to start this workdir afresh.")
    return None

  def _quarantine(self, step: int, error: Exception):
    moved = os.path.join(self.corrupt_directory, f"{step}-{int(time.time())}")
    logging.error("Checkpoint %d in %s cannot be restored (%s: %s); moving it to %s and "
                  "resuming from the previous one.", step, self.directory,
                  type(error).__name__, str(error).splitlines()[0][:300], moved)
    if jax.process_index() == 0:
      os.makedirs(self.corrupt_directory, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), moved)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    self._manager.reload()

  def due(self, step: int, force: bool = False) -> bool:
    """Whether `maybe_save(step, ...)` would write a checkpoint."""
    periodic = self.every_steps and step % self.every_steps == 0
    return bool(force or periodic) and step not in self._manager.all_steps()

  def maybe_save(self, step: int, train_state, force: bool = False) -> bool:
    if not self.due(step, force):
      return False
    self._manager.save(step, args=ocp.args.StandardSave(train_state), force=True)
    self._manager.wait_until_finished()
    return True

  def close(self):
    self._manager.close()


def _shapes(tree) -> list:
  """The sorted (shape, dtype) of every array: what must match for a restore, independent of
  how orbax names the containers."""
  return sorted((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))


def abstract_like(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
