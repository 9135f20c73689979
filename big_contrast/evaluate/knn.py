"""Weighted k-NN classification on frozen features."""
import functools

import jax
import jax.numpy as jnp

from big_contrast import settings
from big_contrast.evaluate import base
from big_contrast.numerics import l2_normalize


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk"))
def knn_accuracy(train_x, train_y, test_x, test_y, *, num_classes, k=20, temperature=0.07,
                 chunk=256):
  """Top-1 of cosine k-NN with temperature-weighted votes.

  As in InstDisc (Wu et al. 2018) and DINO (Caron et al. 2021): each of the k
  nearest training features votes for its class with weight exp(s/τ), where s
  is its cosine similarity to the query.
  """
  train_x, test_x = l2_normalize(train_x), l2_normalize(test_x)
  k = min(k, train_x.shape[0])
  n = test_x.shape[0]
  pad = (-n) % chunk
  queries = jnp.pad(test_x, ((0, pad), (0, 0))).reshape(-1, chunk, test_x.shape[1])

  def predict(q):  # chunks bound the [chunk, N_train] similarity matrix.
    sim, idx = jax.lax.top_k(q @ train_x.T, k)
    votes = jax.nn.one_hot(train_y[idx], num_classes) * jnp.exp(sim / temperature)[..., None]
    return jnp.argmax(votes.sum(1), -1)

  pred = jax.lax.map(predict, queries).reshape(-1)[:n]
  return jnp.mean(pred == test_y)


@base.evaluator("knn", check=base.needs_labels, settings=dict(k=settings.integer(20, low=1),
                                     temperature=settings.positive(0.07)))
def knn(ctx, cfg):
  """k-NN top-1 of the backbone features: train split -> test split."""
  (train_x, train_y), (test_x, test_y) = ctx.features("train"), ctx.features("test")
  return {"knn_top1": knn_accuracy(train_x, train_y, test_x, test_y,
                                   num_classes=ctx.num_classes, k=cfg.k,
                                   temperature=cfg.temperature)}
