"""Linear classifier trained in JAX on frozen features."""
import functools

import jax
import jax.numpy as jnp
import optax

from big_contrast import settings
from big_contrast.evaluate import base
from big_contrast.evaluate import features


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def linear_probe_accuracy(train_x, train_y, test_x, test_y, rng, *, num_classes, epochs=100,
                          batch_size=1024, lr=1e-2, weight_decay=1e-4, train_valid=None,
                          test_valid=None):
  """Test top-1 of a softmax classifier trained on standardised frozen features.

  Features are standardised with the training mean and std (a BatchNorm
  without affine parameters, as in MoCo v3 / MAE linear probing), then a
  linear layer is trained with AdamW, cosine learning rate, mini-batches.
  Rows with `*_valid` False (a bank's padding) weigh nothing.
  """
  weight = lambda v, x: (jnp.ones(x.shape[0]) if v is None else v.astype(jnp.float32))
  w_train, w_test = weight(train_valid, train_x), weight(test_valid, test_x)
  mean, std = features.standard_scale(train_x, w_train)
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  n, d = train_x.shape
  batch_size = min(batch_size, n)
  steps_per_epoch = n // batch_size
  total = epochs * steps_per_epoch
  tx = optax.adamw(optax.cosine_decay_schedule(lr, total), weight_decay=weight_decay)
  params = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros((num_classes,))}

  def loss_fn(p, x, y, w):
    logits = x @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)

  def epoch(carry, rng):
    order = jax.random.permutation(rng, n)[:steps_per_epoch * batch_size]

    def step(carry, idx):
      p, opt = carry
      grads = jax.grad(loss_fn)(p, train_x[idx], train_y[idx], w_train[idx])
      updates, opt = tx.update(grads, opt, p)
      return (optax.apply_updates(p, updates), opt), None

    return jax.lax.scan(step, carry, order.reshape(steps_per_epoch, batch_size))[0], None

  (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(rng, epochs))
  pred = jnp.argmax(test_x @ params["w"] + params["b"], -1)
  return ((pred == test_y) * w_test).sum() / w_test.sum()


@base.evaluator("linear_probe", check=base.needs_labels, settings=dict(
    epochs=settings.integer(90, low=1), batch_size=settings.integer(1024, low=1),
    lr=settings.positive(1e-2), weight_decay=settings.number(1e-4, low=0)))
def linear_probe(ctx, cfg):
  """Linear-probe top-1 of the backbone features: trained on the train split, tested on test
  (a cheap monitor on pre-extracted features; `linear_eval` is the papers' protocol)."""
  train_x, train_y, train_valid = ctx.features("train").flat()
  test_x, test_y, test_valid = ctx.features("test").flat()
  return {"linear_probe_top1": linear_probe_accuracy(
      train_x, train_y, test_x, test_y, base.random_key(), num_classes=ctx.num_classes,
      epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
      train_valid=train_valid, test_valid=test_valid)}
