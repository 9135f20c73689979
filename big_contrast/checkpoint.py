"""Orbax checkpoints of the whole train state: save every N steps, keep K, auto-resume.

A checkpoint is written to a temporary directory and renamed when complete, so a process
killed mid-save leaves no partial step behind. Once it is complete, a digest of its content
(two checksums per array, `digest`) is written beside it, and a restore recomputes it from
what was read: a step that cannot be restored (truncated, corrupt or missing files) or whose
content differs from its digest (flipped bits) is reported, moved to
`workdir/checkpoints_corrupt/` (the newest `CORRUPT_KEEP` are kept), and the previous one is
used.
"""
import json
import os
import re
import shutil
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from big_contrast import settings

# `config.checkpoint`: save every `every_steps` steps (0: only at the end), keep the newest `keep`.
SETTINGS = dict(every_steps=settings.integer(1000, low=0), keep=settings.integer(3, low=1))

DIGEST = "content_digest.json"  # In each step's directory, written after the save completes.
CORRUPT_KEEP = 3  # Quarantined checkpoints kept for inspection; older ones are deleted.


def _out_of_memory(e: Exception) -> bool:
  return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e)


class CorruptCheckpoint(ValueError):
  """A checkpoint whose restored content differs from the digest written when it was saved."""


def earlier_step(steps, step: int, flag: str) -> str:
  """The fix for a checkpoint `step` that cannot be read, among a run's `steps`: the latest
  earlier one, as `flag` (e.g. "--step") selects it."""
  earlier = [s for s in steps if s < step]
  if not earlier:
    return "the run has no earlier checkpoint"
  return f"use an earlier one, e.g. {flag}={earlier[-1]} (steps {list(steps)})"


def digest(tree) -> dict:
  """{path: [sum, weighted sum]} of every array's bits, modulo 2**64.

  Each array's elements are read as unsigned integers of their width and summed, plain and
  weighted by 2·i + 1 (i: the flat index in the global array). An odd weight keeps any change
  of one element visible (a flipped bit changes the weighted sum by an odd multiple of a power
  of two below 2**64), and the weights tell positions apart. Every process sums only its own
  shards (replica 0 of each), by their global indices, and the partial sums are added across
  processes: no array is gathered onto one host, and the result does not depend on the mesh.
  """
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  partial = np.zeros((len(leaves), 2), np.uint64)
  for n, (_, x) in enumerate(leaves):
    if isinstance(x, jax.Array):
      shards = [(s.index, np.asarray(s.data)) for s in x.addressable_shards if s.replica_id == 0]
      shape = x.shape
    else:
      shards = [((), np.asarray(x))] if jax.process_index() == 0 else []
      shape = np.shape(x)
    for index, data in shards:
      partial[n] += _sums(data, index, shape)
  if jax.process_count() > 1:  # As 32-bit halves: JAX without x64 would truncate uint64.
    halves = np.stack([partial >> np.uint64(32), partial & np.uint64(0xFFFFFFFF)]).astype(
        np.uint32)
    every = np.asarray(multihost_utils.process_allgather(halves)).astype(np.uint64)
    partial = ((every[:, 0] << np.uint64(32)) | every[:, 1]).sum(axis=0, dtype=np.uint64)
  return {jax.tree_util.keystr(p): [int(a), int(b)] for (p, _), (a, b) in zip(leaves, partial)}


_CHUNK = 1 << 22  # Elements summed at once: the index arithmetic takes ~32 bytes each.


def _sums(data: np.ndarray, index: tuple, shape: tuple) -> np.ndarray:
  """(sum, weighted sum) mod 2**64 of one shard `data` = global_array[index], in chunks of
  leading-axis rows (sums mod 2**64 add up exactly)."""
  data = np.asarray(data)
  if data.ndim == 0 or data.size <= _CHUNK:
    return _chunk_sums(data, index, shape)
  rows = max(1, _CHUNK // (data.size // data.shape[0]))
  start = (index[0].start or 0) if index else 0
  total = np.zeros(2, np.uint64)
  with np.errstate(over="ignore"):
    for r in range(0, data.shape[0], rows):
      part = data[r:r + rows]
      total += _chunk_sums(part, (slice(start + r, start + r + len(part)), *index[1:]), shape)
  return total


def _chunk_sums(data: np.ndarray, index: tuple, shape: tuple) -> np.ndarray:
  data = np.ascontiguousarray(data)
  bits = data.reshape(-1).view(f"u{data.dtype.itemsize}") if data.size else np.zeros(0, "u1")
  flat = np.zeros(data.shape, np.uint64)
  stride = 1
  for d in reversed(range(len(shape))):
    start = (index[d].start or 0) if d < len(index) else 0
    axis = np.arange(start, start + data.shape[d], dtype=np.uint64) * np.uint64(stride)
    flat += axis.reshape((-1,) + (1,) * (len(shape) - 1 - d))
    stride *= shape[d]
  values = bits.astype(np.uint64)
  weights = flat.reshape(-1) * np.uint64(2) + np.uint64(1)
  with np.errstate(over="ignore"):
    return np.array([values.sum(dtype=np.uint64), (values * weights).sum(dtype=np.uint64)],
                    np.uint64)


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

  @classmethod
  def reader(cls, workdir: str):
    """A Checkpointer that only reads (`restore`, `restore_host`): it deletes, moves and
    writes nothing, so it can read the checkpoints of a run that is still training there."""
    self = cls.__new__(cls)
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.corrupt_directory, self.every_steps = None, 0
    # Orbax warns that a read-only manager saves nothing, which is the point here. On the
    # logger, not absl's handler: outside an absl app (tools) Python's own handler prints.
    expected = lambda r: "read only" not in r.getMessage() and "read_only" not in r.getMessage()
    logging.get_absl_logger().addFilter(expected)
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
          item_handlers=ocp.StandardCheckpointHandler())
    finally:
      logging.get_absl_logger().removeFilter(expected)
    return self

  def all_steps(self) -> list:
    return sorted(self._manager.all_steps())

  def restore(self, step: int, abstract_state):
    """Checkpoint `step`, checked against its digest, with the shapes, dtypes and shardings
    of `abstract_state`. Raises ValueError naming the problem; moves nothing."""
    if step not in self._manager.all_steps():
      raise ValueError(f"There is no checkpoint {step} in {self.directory}; it holds "
                       f"{self.all_steps() or 'none'}.")
    if _shapes(self._manager.item_metadata(step)) != _shapes(abstract_state):
      raise ValueError(f"Checkpoint {step} in {self.directory} holds a train state of other "
                       "shapes than this config's model and optimizer: read it with the "
                       "config that wrote it (the run's config.json).")
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      self._verify(step, restored)
    except CorruptCheckpoint as e:
      raise CorruptCheckpoint(f"Checkpoint {step} in {self.directory}: {e}.") from None
    return restored

  def restore_host(self, step: int) -> dict:
    """Checkpoint `step` as host numpy arrays, in the layout it was saved with (no config
    needed, any mesh it was saved on), checked against its digest. Raises ValueError for a
    step that is not there and CorruptCheckpoint, naming the step, for one that cannot be
    restored or differs from its digest."""
    if step not in self._manager.all_steps():
      raise ValueError(f"There is no checkpoint {step} in {self.directory}; it holds "
                       f"{self.all_steps() or 'none'}.")
    try:
      metadata = self._manager.item_metadata(step)
      if not jax.tree.leaves(metadata):  # Orbax reads a lost _METADATA as holding nothing.
        raise CorruptCheckpoint("its metadata is missing or empty")
      # numpy leaves make orbax restore on the host, whatever mesh wrote the checkpoint.
      target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), metadata)
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
      self._verify(step, restored)
    except CorruptCheckpoint as e:
      raise CorruptCheckpoint(f"Checkpoint {step} in {self.directory}: {e}.") from None
    except Exception as e:  # pylint: disable=broad-except
      if _out_of_memory(e) or isinstance(e, PermissionError):  # This reader's trouble.
        raise
      # Orbax/TensorStore raise assorted types for missing, truncated or garbled files.
      raise CorruptCheckpoint(f"Checkpoint {step} in {self.directory} cannot be restored "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:300]}).") from e
    return restored

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
        if not shapes:  # Orbax reads a checkpoint without its _METADATA as holding nothing.
          raise CorruptCheckpoint("its metadata is missing or empty")
      except Exception as e:  # pylint: disable=broad-except
        self._quarantine(step, e)
        continue
      if shapes != want:
        raise ValueError(
            f"Checkpoint {step} in {self.directory} holds a train state of other shapes than "
            "this config's model and optimizer (e.g. another width, depth or optimizer); "
            "resume with the config that wrote it, or use a new --workdir.")
      try:
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        self._verify(step, restored)
        return restored
      except Exception as e:  # pylint: disable=broad-except
        if _out_of_memory(e):  # This machine's trouble, not the checkpoint's: keep it.
          raise RuntimeError(f"Restoring checkpoint {step} from {self.directory} ran out of "
                             f"memory ({str(e).splitlines()[0][:200]}); the checkpoint is left "
                             "in place. Free memory (or use more devices) and run again.") from e
        # Orbax/TensorStore raise assorted types for missing, truncated or garbled files.
        self._quarantine(step, e)
    if steps:
      raise ValueError(f"None of the checkpoints {steps} in {self.directory} could be "
                       f"restored; they were moved to {self.corrupt_directory} (see the log for "
                       "each error). Run again to start this workdir afresh.")
    return None

  def _digest_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step), DIGEST)

  def _verify(self, step: int, restored):
    """Raises CorruptCheckpoint if `restored` differs from the digest saved with it."""
    saved, status, problem = None, 0, ""  # status: 0 read, 1 missing, 2 unreadable.
    try:
      with open(self._digest_path(step)) as f:
        saved = json.load(f)
    except FileNotFoundError:
      status = 1
    except (OSError, ValueError) as e:
      status, problem = 2, str(e)
    if jax.process_count() > 1:  # Every process takes the same branch: digest() is collective.
      status = int(np.max(multihost_utils.process_allgather(np.int32(status))))
    if status == 1:
      # Written before digests, or killed between the save and its digest: complete (orbax
      # renamed it into place) but unverifiable.
      logging.warning("Checkpoint %d has no %s: restored without a content check.", step,
                      DIGEST)
      return
    if status == 2:
      raise CorruptCheckpoint(f"its {DIGEST} cannot be read ({problem or 'on another host'})")
    # By canonical path: a restore shaped by the checkpoint's metadata (restore_host) gives
    # optax's named tuples as dicts, ['opt_state'][0]['mu'] for ['opt_state'][0].mu.
    now = {_canonical(k): v for k, v in digest(restored).items()}
    names = {_canonical(k): k for k in saved}  # The reported names are the digest's own.
    saved = {c: saved[k] for c, k in names.items()}
    bad = sorted(names.get(k, k) for k in now.keys() | saved.keys()
                 if now.get(k) != saved.get(k))
    if bad:
      raise CorruptCheckpoint(
          f"{len(bad)} of {len(now)} arrays differ from the digest written when it was saved "
          f"(e.g. {', '.join(bad[:3])}): its files changed on disk")

  def _quarantine(self, step: int, error: Exception):
    if self.corrupt_directory is None:  # A reader moves nothing.
      raise CorruptCheckpoint(f"Checkpoint {step} in {self.directory} cannot be restored: "
                              f"{error}") from error
    moved = os.path.join(self.corrupt_directory, f"{step}-{time.time_ns()}")
    logging.error("Checkpoint %d in %s cannot be restored (%s: %s); moving it to %s and "
                  "resuming from the previous one.", step, self.directory,
                  type(error).__name__, str(error).splitlines()[0][:300], moved)
    if jax.process_index() == 0:
      os.makedirs(self.corrupt_directory, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), moved)
      kept = sorted(os.listdir(self.corrupt_directory),  # <step>-<time moved>
                    key=lambda n: (n.rpartition("-")[2].zfill(20), n))
      for name in kept[:-CORRUPT_KEEP]:  # A disk that keeps failing must not fill up.
        logging.warning("Deleting the oldest quarantined checkpoint %s.", name)
        shutil.rmtree(os.path.join(self.corrupt_directory, name), ignore_errors=True)
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
    # The digest of what was saved, once the save is complete: a restore checks against it.
    sums = digest(train_state)
    if jax.process_index() == 0:
      path = self._digest_path(step)
      with open(path + ".tmp", "w") as f:
        json.dump(sums, f)
        f.flush()
        os.fsync(f.fileno())
      os.replace(path + ".tmp", path)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"digest of checkpoint {step}")
    return True

  def close(self):
    self._manager.close()


def _canonical(key: str) -> str:
  """A digest key (jax.tree_util.keystr) as "a/0/b", whether its containers are dicts,
  sequences or named tuples."""
  return "/".join("".join(names) for names in re.findall(r"\['([^']*)'\]|\[(\d+)\]|\.(\w+)",
                                                          key))


def _shapes(tree) -> list:
  """The sorted (shape, dtype) of every array: what must match for a restore, independent of
  how orbax names the containers."""
  return sorted((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))


def abstract_like(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
