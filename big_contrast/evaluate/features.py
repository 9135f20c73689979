"""Frozen-feature extraction, sharded over the mesh like training.

`bank` keeps the features of a split on the devices, streamed batch by batch into one sharded
buffer: at ImageNet scale (1.28M x 2048 float32, 10 GB) no host ever holds the whole split.
`extract` gathers a split on every host, for the evaluators of small sets (zero-shot
prompts, retrieval).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from big_contrast import sharding
from input_pipeline import pipeline


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
    """(x [N_padded, D], y, valid): the rows in order, still sharded (no host copy)."""
    return (self.x.reshape(-1, self.x.shape[-1]), self.y.reshape(-1), self.valid.reshape(-1))

  def gather(self):
    """(x, y) of the valid rows as numpy arrays on every host: for small splits."""
    x, y, valid = multihost_utils.process_allgather(self.flat(), tiled=True)
    valid = np.asarray(valid)
    return np.asarray(x)[valid], np.asarray(y)[valid]


def bank_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(None, sharding.batch_axes(mesh)))


@functools.partial(jax.jit, donate_argnums=0)
def _put(buffer, i, rows):
  return jax.lax.dynamic_update_index_in_dim(buffer, rows.astype(buffer.dtype), i, 0)


def bank(features_fn, source, mesh, batch_size, key="image", tokenizer=None) -> Bank:
  """`features_fn(batch[key])` (jitted, batch-sharded output) over one pass of `source`, in
  order, written batch by batch into a Bank."""
  num_batches = -(-len(source) // batch_size)
  buffers = None
  for i, local in enumerate(pipeline.eval_batches(source, batch_size, jax.process_index(),
                                                  jax.process_count(), tokenizer)):
    batch = sharding.global_batch(local, mesh)
    rows = (features_fn(batch[key]), batch["label"], batch["mask"])
    if buffers is None:
      buffers = [jax.jit(functools.partial(jnp.zeros, (num_batches, *r.shape), r.dtype),
                         out_shardings=bank_sharding(mesh))() for r in rows]
    buffers = [_put(b, i, r) for b, r in zip(buffers, rows)]
  return Bank(*buffers)


def extract(features_fn, source, mesh, batch_size, key="image", tokenizer=None):
  """(features, labels) of one pass of `source` as numpy arrays holding the whole split, on
  every process, with the padding of the last batch removed."""
  return bank(features_fn, source, mesh, batch_size, key, tokenizer).gather()
