"""Frozen-feature extraction, sharded over the mesh like training.

`bank` keeps the features of a split on the devices, streamed batch by batch into one sharded
buffer: at ImageNet scale (1.28M x 2048 float32, 10 GB) no host ever holds the whole split.
`Bank.gather` brings a split to every host, for the evaluators of small sets (zero-shot
prompts, retrieval).
"""
import dataclasses
import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from big_contrast import sharding
from input_pipeline import pipeline
from input_pipeline import records


@dataclasses.dataclass
class Bank:
  """A split's features on the devices: x [batches, batch, D], labels and valid [batches,
  batch]; the batch axis is sharded over the mesh's batch axes (each device holds its rows of
  every batch), padding rows of the last batch have valid=False."""
  x: jax.Array
  y: jax.Array
  valid: jax.Array

  def __len__(self):
    return int(self.valid.sum())

  def flat(self):
    """(x [N_padded, D], y, valid), still sharded: each device's rows of every batch made
    contiguous (batch-major order would need an all-gather). The rows' order is not the
    split's; use them where order does not matter (a classifier's training set)."""
    return _flat(self.x, self.y, self.valid)

  def gather(self):
    """(x, y) of the valid rows, in the split's order, as numpy arrays on every host: for
    small splits."""
    x, y, valid = (np.asarray(a).reshape(-1, *a.shape[2:]) for a in
                   multihost_utils.process_allgather((self.x, self.y, self.valid), tiled=True))
    return x[valid], y[valid]


def standard_scale(x, valid):
  """(mean, std) over the valid rows (valid [...] matching x [..., D]'s leading axes), with
  BatchNorm's epsilon: a feature constant over the split (a dead unit) is not blown up."""
  w = valid[..., None].astype(jnp.float32)
  x = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean = (x * w).sum(axes) / w.sum()
  return mean, jnp.sqrt((jnp.square(x - mean) * w).sum(axes) / w.sum() + 1e-5)


@jax.jit
def _flat(*arrays):  # One program for the three (see `bank` on programs in flight).
  return tuple(jnp.swapaxes(a, 0, 1).reshape(-1, *a.shape[2:]) for a in arrays)


def bank_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(None, sharding.batch_axes(mesh)))


@functools.partial(jax.jit, donate_argnums=0)
def _put(buffers, i, rows):
  """Batch `i` of each buffer set to `rows` (one compiled program for the three)."""
  return tuple(jax.lax.dynamic_update_index_in_dim(b, r.astype(b.dtype), i, 0)
               for b, r in zip(buffers, rows))


def bank(features_fn, source, mesh, batch_size, key="image", tokenizer=None) -> Bank:
  """`features_fn(batch[key])` (jitted, batch-sharded output) over one pass of `source`, in
  order, written batch by batch into a Bank."""
  if not len(source):
    raise ValueError("The evaluation split is empty: check config.data (its test_split).")
  num_batches = -(-len(source) // batch_size)
  buffers, replaced, logged = None, 0, set()
  for i, local in enumerate(pipeline.eval_batches(source, batch_size, jax.process_index(),
                                                  jax.process_count(), tokenizer)):
    replaced += records.count_replaced(local.get(records.REPLACED, ()), logged)
    # Only what is read travels to the devices (not the other tower's inputs).
    batch = sharding.global_batch({k: local[k] for k in (key, "label", "mask")}, mesh)
    rows = (features_fn(batch[key]), batch["label"], batch["mask"])
    if buffers is None:
      shapes = tuple(((num_batches, *r.shape), r.dtype) for r in rows)
      buffers = jax.jit(lambda: tuple(jnp.zeros(*s) for s in shapes),
                        out_shardings=(bank_sharding(mesh),) * 3)()
    buffers = _put(buffers, i, rows)
    if jax.process_count() > 1:
      # One batch's programs at a time: independent programs with collectives (the encoder
      # of successive batches) in flight at once can interleave them differently on
      # different hosts, which deadlocked two CPU processes.
      jax.block_until_ready(buffers)
  if replaced:  # Each process's rows: the split's own count is their sum.
    logging.warning("%d evaluation examples read by this process stood in for records that "
                    "could not be used (each logged with its key); the split's metrics count "
                    "their replacements instead.", replaced)
  return Bank(*buffers)
