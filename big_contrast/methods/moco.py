"""MoCo v2 (queue of keys) and MoCo v3 (in-batch keys, predictor): one momentum-encoder method.

  MoCo v2 (Chen et al. 2020, arXiv:2003.04297): queue_size=K>0, no predictor.
  MoCo v3 (Chen et al. 2021, arXiv:2104.02057): queue_size=0, predictor,
    symmetric loss, momentum scheduled from m0 to 1 with a cosine.

The key encoder is an exponential moving average of the query encoder
(backbone + projector, not the predictor), kept in the method state.

BatchNorm leakage: MoCo shuffled keys across GPUs ("shuffle-BN") because with
per-device BatchNorm a query and its key are normalised with statistics of the
same small sub-batch, which the network can exploit to find the positive. Here
every BatchNorm runs on the GLOBAL batch under jit (SyncBN, as SimCLR does to
prevent the same leak), so no sub-batch statistics exist to exploit and the
result does not depend on the device count (tests/moco_test.py checks both).
"""
import math

import jax
import jax.numpy as jnp

from big_contrast import losses
from big_contrast.methods import base


def momentum_at(step, m0, m1, total_steps):
  """Cosine schedule from m0 at step 0 to m1 at the end (BYOL, MoCo v3); constant if m0 == m1."""
  progress = jnp.minimum(step / max(total_steps, 1), 1.0)
  return m1 - (m1 - m0) * (jnp.cos(math.pi * progress) + 1) / 2


def enqueue(queue, ptr, keys):
  """Writes `keys` (the global batch, in order) over the oldest entries of the ring buffer."""
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, 0))
  return queue, (ptr + keys.shape[0]) % queue.shape[0]


class MoCo(base.Method):

  def __init__(self, config, schedule):
    super().__init__(config, schedule)
    cfg = config.moco
    self.model = base.encoder(config.model, predictor=cfg.predictor)
    keys_per_step = config.batch_size * (2 if cfg.symmetric else 1)
    if cfg.queue_size and cfg.queue_size % keys_per_step:
      raise ValueError(f"config.moco.queue_size={cfg.queue_size} must be a multiple of the "
                       f"{keys_per_step} keys enqueued per step (config.batch_size × "
                       f"{2 if cfg.symmetric else 1}); e.g. {keys_per_step * 256}.")
    if config.num_views != 2:
      raise ValueError(f"MoCo uses two views; got config.num_views={config.num_views}.")

  def init(self, rng, images):
    params, model_state = base.init_model(self.model, rng, self.eval_view(images))
    ema = {"params": {k: v for k, v in params.items() if k != "predictor"},
           "model": model_state}
    state = {"model": model_state, "ema": jax.tree.map(jnp.copy, ema)}
    if self.config.moco.queue_size:
      # Random unit vectors until real keys replace them, as in MoCo.
      queue = jax.random.normal(jax.random.fold_in(rng, 1),
                                (self.config.moco.queue_size, self.config.model.head_dim))
      state.update(queue=losses.l2_normalize(queue), queue_ptr=jnp.zeros((), jnp.int32))
    return params, state

  def loss(self, params, state, batch, rng, step):
    cfg = self.config.moco
    (x1, x2), _ = self.views(rng, batch["image"])
    _, (q1, q2), model_state = base.views_forward(self.model, params, state["model"], [x1, x2])
    ema = state["ema"]
    _, (k1, k2), ema_model = base.views_forward(self.model, ema["params"], ema["model"],
                                                [x1, x2], predict=False)
    k1, k2 = jax.lax.stop_gradient(losses.l2_normalize(k1)), jax.lax.stop_gradient(
        losses.l2_normalize(k2))
    queue = state.get("queue")
    t = self.config.loss.temperature
    loss = losses.info_nce(q1, k2, t, queue)
    if cfg.symmetric:
      loss = (loss + losses.info_nce(q2, k1, t, queue)) / 2
    new_state = {**state, "model": model_state, "ema": {**ema, "model": ema_model}}
    if queue is not None:
      new_keys = jnp.concatenate([k2, k1]) if cfg.symmetric else k2
      new_state["queue"], new_state["queue_ptr"] = enqueue(queue, state["queue_ptr"], new_keys)
    return loss, (new_state, {})

  def after_update(self, params, state, step):
    cfg = self.config.moco
    m = momentum_at(step, cfg.momentum, cfg.get("momentum_final", cfg.momentum),
                    self.schedule.total_steps)
    ema = state["ema"]
    ema_params = jax.tree.map(lambda e, p: m * e + (1 - m) * p, ema["params"],
                              {k: params[k] for k in ema["params"]})
    return params, {**state, "ema": {**ema, "params": ema_params}}

  def features(self, params, state, images):
    (h, _), _ = base.forward(self.model, params, state["model"], self.eval_view(images),
                             train=False, predict=False)
    return h
