"""Weighted k-NN classification on frozen features, with the training bank sharded."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from big_contrast import settings
from big_contrast import sharding
from big_contrast.evaluate import base
from big_contrast.evaluate import features
from big_contrast.numerics import HIGHEST
from big_contrast.numerics import l2_normalize
from big_contrast.numerics import top_k_hits


def _merge_top_k(sims, labels, k):
  top, idx = jax.lax.top_k(sims, k)
  return top, jnp.take_along_axis(labels, idx, axis=-1)


def _neighbours(mesh, k):
  """(bank x, y, valid [K, B, ...], queries [Q, D]) -> the k most similar valid bank rows of
  each query, (cosine [Q, k], label [Q, k]), replicated. Each device scans its own rows of
  the bank one batch at a time, keeping a running top-k; the devices' top-k are then
  all-gathered and merged. Memory per device: its bank rows plus [Q, batch / devices]."""
  axes = sharding.batch_axes(mesh)

  def local(bank_x, bank_y, bank_valid, queries):
    def scan(carry, rows):
      x, y, valid = rows
      # In the bank's dtype with float32 accumulation: no float32 copy of a bf16 bank.
      dot = lambda a, b, spec: jnp.einsum(spec, a, b, preferred_element_type=jnp.float32,
                                          precision=HIGHEST)
      inv_norm = jax.lax.rsqrt(jnp.maximum(dot(x, x, "bd,bd->b"), 1e-12))
      sims = jnp.where(valid[None], dot(queries.astype(x.dtype), x, "qd,bd->qb") * inv_norm,
                       -jnp.inf)
      return _merge_top_k(jnp.concatenate([carry[0], sims], 1),
                          jnp.concatenate([carry[1], jnp.broadcast_to(y, sims.shape)], 1),
                          k), None
    init = (jnp.full((queries.shape[0], k), -jnp.inf), jnp.zeros((queries.shape[0], k),
                                                                 bank_y.dtype))
    (sims, labels), _ = jax.lax.scan(scan, init, (bank_x, bank_y, bank_valid))
    gather = lambda a: jax.lax.all_gather(a, axes, axis=1, tiled=True)
    return _merge_top_k(gather(sims), gather(labels), k)

  bank_spec = P(None, axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(bank_spec, bank_spec, bank_spec, P()),
                       out_specs=(P(), P()), check_vma=False)


@functools.partial(jax.jit, static_argnames=("mesh", "num_classes", "k"))
def knn_counts(bank_x, bank_y, bank_valid, test_x, test_y, test_valid, *, mesh, num_classes,
               k, temperature):
  """(top-1 hits, top-5 hits) over the valid rows of test_x [K, B, D] (labels and valid
  [K, B]) against the bank: each of the k nearest bank rows votes for its class with weight
  exp(cos / τ). The test batches go one at a time, inside this one program: independent
  programs with collectives in flight at once can interleave them differently on different
  hosts."""
  neighbours = _neighbours(mesh, k)

  def batch(counts, i):
    queries = l2_normalize(test_x[i].astype(jnp.float32))
    sims, labels = neighbours(bank_x, bank_y, bank_valid, queries)
    votes = (jax.nn.one_hot(labels, num_classes) * jnp.exp(sims / temperature)[..., None]
             ).sum(1)
    hits = top_k_hits(votes, test_y[i], test_valid[i])
    return (counts[0] + hits[1], counts[1] + hits[5]), None

  zero = jnp.zeros((), jnp.int32)
  return jax.lax.scan(batch, (zero, zero), jnp.arange(test_x.shape[0]))[0]


def knn_bank_accuracy(train: features.Bank, test: features.Bank, mesh, *, num_classes, k=20,
                      temperature=0.07) -> dict:
  """{"top1", "top5"} of k-NN from the `train` bank to the `test` bank (InstDisc, Wu et al.
  2018; DINO, Caron et al. 2021); both stay sharded, the test split goes one batch at a
  time."""
  top1, top5 = knn_counts(train.x, train.y, train.valid, test.x, test.y, test.valid, mesh=mesh,
                          num_classes=num_classes, k=min(k, len(train)),
                          temperature=temperature)
  return {"top1": float(top1) / len(test), "top5": float(top5) / len(test)}


def _host_bank(x, y, rows: int) -> features.Bank:
  """A Bank of host arrays x [N, D], y [N], padded to batches of `rows`."""
  x, y = np.asarray(x), np.asarray(y)
  pad = (-len(y)) % rows
  valid = np.arange(len(y) + pad) < len(y)
  return features.Bank(jnp.asarray(np.pad(x, ((0, pad), (0, 0)))).reshape(-1, rows, x.shape[1]),
                       jnp.asarray(np.pad(y, (0, pad))).reshape(-1, rows),
                       jnp.asarray(valid).reshape(-1, rows))


def knn_accuracy(train_x, train_y, test_x, test_y, *, num_classes, k=20, temperature=0.07,
                 chunk=256):
  """Top-1 of k-NN on host arrays, on one device: knn_bank_accuracy of one-device banks."""
  mesh = sharding.make_mesh([("data", 1)], jax.devices()[:1])
  return knn_bank_accuracy(_host_bank(train_x, train_y, len(train_y)),
                           _host_bank(test_x, test_y, chunk), mesh, num_classes=num_classes,
                           k=k, temperature=temperature)["top1"]


@base.evaluator("knn", check=base.needs_labels, settings=dict(k=settings.integer(20, low=1),
                                     temperature=settings.positive(0.07)))
def knn(ctx, cfg):
  """k-NN top-1 and top-5 of the backbone features: train split -> test split."""
  acc = knn_bank_accuracy(ctx.features("train"), ctx.features("test"), ctx.run.mesh,
                          num_classes=ctx.num_classes, k=cfg.k, temperature=cfg.temperature)
  return {"knn_top1": acc["top1"], "knn_top5": acc["top5"]}
