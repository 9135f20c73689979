"""Orbax checkpoints of the whole train state: save every N steps, keep K, auto-resume."""
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """The train state pytree {step, params, state, opt_state, rng} in `workdir/checkpoints`.

  The data position is the step itself: batches are indexed by step (see
  input_pipeline.train_batches), so restoring the step restores the stream.
  """

  def __init__(self, workdir: str, every_steps: int, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self):
    return self._manager.latest_step()

  def restore_latest(self, abstract_state):
    """Latest checkpoint restored with the shapes, dtypes and shardings of `abstract_state`."""
    step = self._manager.latest_step()
    if step is None:
      return None
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def maybe_save(self, step: int, train_state, force: bool = False) -> bool:
    if not force and (not self.every_steps or step % self.every_steps):
      return False
    if step in self._manager.all_steps():
      return False
    self._manager.save(step, args=ocp.args.StandardSave(train_state), force=True)
    self._manager.wait_until_finished()
    return True

  def close(self):
    self._manager.close()


def abstract_like(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
