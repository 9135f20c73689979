"""Frozen-feature extraction, sharded over the mesh like training."""
import jax
import numpy as np
from jax.experimental import multihost_utils

from big_contrast import sharding
from input_pipeline import pipeline


def extract(features_fn, source, mesh, batch_size, key="image", tokenizer=None):
  """Runs `features_fn(batch[key])` (already jitted) over one full pass of `source`.

  `key` is "image", or "text" for image-text sources read with `tokenizer`.
  Returns (features, labels) as numpy arrays holding the whole split, on every
  process, with the padding of the last batch removed.
  """
  feats, labels = [], []
  for local in pipeline.eval_batches(source, batch_size, jax.process_index(),
                                           jax.process_count(), tokenizer):
    batch = sharding.global_batch(local, mesh)
    out = features_fn(batch[key])
    f, y, m = multihost_utils.process_allgather((out, batch["label"], batch["mask"]), tiled=True)
    feats.append(np.asarray(f)[np.asarray(m)])
    labels.append(np.asarray(y)[np.asarray(m)])
  return np.concatenate(feats), np.concatenate(labels)
