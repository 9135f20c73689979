"""MoCo v2 (queue of keys) and MoCo v3 (in-batch keys, predictor): one momentum-encoder method.

  MoCo v2 (Chen et al. 2020, arXiv:2003.04297): queue_size=K>0, no predictor.
  MoCo v3 (Chen et al. 2021, arXiv:2104.02057): queue_size=0, predictor,
    symmetric loss, momentum scheduled from m0 to 1 with a cosine.

The key encoder is an exponential moving average of the query encoder
(backbone + projector, not the predictor), kept in the method state.

BatchNorm leakage (MoCo §3.3): a query and its positive key normalised with
the same batch statistics can be matched by those statistics alone; with a
queue this is a real shortcut, because every negative key comes from an older
batch with other statistics (global SyncBN does not remove it: the positive is
still the only key from the current batch). MoCo's answer, shuffle-BN, is
reproduced with `moco.bn_groups` = G, independent of the device count: the
query encoder's BatchNorm runs over G groups of consecutive examples (MoCo's
per-GPU BN), the key encoder's over G groups of a fresh random permutation of
the batch (MoCo's shuffled keys), so a query and its key are normalised with
statistics of different, random subsets. MoCo v3 (in-batch keys, no queue)
uses SyncBN and G = 1: its negatives share the batch statistics.

Loss scale: with a queue (v2) the InfoNCE of the two directions is averaged;
with in-batch keys (v3) each direction is 2τ·InfoNCE and the two are summed,
as in MoCo v3's code (it matters for LARS/SGD, not for AdamW).
"""
import math

import jax
import jax.numpy as jnp

from big_contrast import losses
from big_contrast import models
from big_contrast import numerics
from big_contrast import settings
from big_contrast.methods import base


def momentum_at(step, m0, m1, total_steps):
  """Cosine schedule from m0 at step 0 to m1 at the end (BYOL, MoCo v3); constant if m0 == m1."""
  progress = jnp.minimum(step / max(total_steps, 1), 1.0)
  return m1 - (m1 - m0) * (jnp.cos(math.pi * progress) + 1) / 2


def random_queue(rng, size: int, dim: int) -> dict:
  """{"queue": [size, dim] random unit vectors (until real keys replace them, as in MoCo),
  "queue_ptr": 0}: the ring buffer `enqueue` writes."""
  queue = jax.random.normal(rng, (size, dim))
  return {"queue": numerics.l2_normalize(queue), "queue_ptr": jnp.zeros((), jnp.int32)}


def enqueue(queue, ptr, keys):
  """Writes `keys` (the global batch, in order) over the oldest entries of the ring buffer."""
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, 0))
  return queue, (ptr + keys.shape[0]) % queue.shape[0]


def grouped_forward(model, params, model_state, x, groups, perm=None, **kw):
  """`base.forward` with BatchNorm statistics per group of B/`groups` examples.

  The groups are consecutive examples of x, or of x[perm] when a permutation is
  given (outputs come back in the order of x). The running statistics are
  updated with the mean over groups.
  """
  if groups <= 1:
    return base.forward(model, params, model_state, x, **kw)
  if perm is not None:
    x = x[perm]
  out, states = jax.vmap(lambda xg: base.forward(model, params, model_state, xg, **kw))(
      x.reshape(groups, -1, *x.shape[1:]))
  out = jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), out)
  if perm is not None:
    out = jax.tree.map(lambda o: o[jnp.argsort(perm)], out)
  return out, jax.tree.map(lambda s: s.mean(0), states)


def _float32(x):
  return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.copy(x)


@base.register("moco")
class MoCo(base.Method):
  export = "encoder"

  @classmethod
  def settings(cls):
    # bn_groups: shuffle-BN groups (module docstring); 1 = BatchNorm over the whole batch.
    return dict(base.view_settings(2, choices=(2,)),
                model=models.encoder_settings(predictor=True),
                loss=dict(temperature=settings.positive(0.1)),
                moco=dict(momentum=settings.probability(0.99),
                          momentum_final=settings.probability(1.0),
                          queue_size=settings.integer(0, low=0),
                          predictor=settings.boolean(True), symmetric=settings.boolean(True),
                          bn_groups=settings.integer(1, low=1)))

  def __init__(self, config, schedule, mesh=None, tokenizer=None):
    super().__init__(config, schedule, mesh, tokenizer)
    cfg = config.moco
    self.model = base.encoder(config.model, predictor=cfg.predictor)
    self.groups = cfg.get("bn_groups", 1)
    if config.batch_size % self.groups:
      raise ValueError(f"config.moco.bn_groups={self.groups} must divide config.batch_size="
                       f"{config.batch_size}.")
    chunks = config.model.get("block_chunks", 1)
    if (config.batch_size // self.groups) % chunks:  # The towers run per group.
      raise ValueError(f"config.model.block_chunks={chunks} must divide each shuffle-BN "
                       f"group's {config.batch_size // self.groups} examples "
                       f"(config.batch_size / config.moco.bn_groups).")
    keys_per_step = config.batch_size * (2 if cfg.symmetric else 1)
    if cfg.queue_size and cfg.queue_size % keys_per_step:
      raise ValueError(f"config.moco.queue_size={cfg.queue_size} must be a multiple of the "
                       f"{keys_per_step} keys enqueued per step (config.batch_size × "
                       f"{2 if cfg.symmetric else 1}); e.g. {keys_per_step * 256}.")

  def init(self, rng, images):
    params, model_state = base.init_model(self.model, rng, self.eval_view(images))
    ema = {"params": {k: v for k, v in params.items() if k != "predictor"},
           "model": model_state}
    # The momentum encoder in float32 whatever the parameters' dtype: at m >= 0.99 a bf16
    # average rounds most of each (1 - m)(p - e) step away and stalls.
    state = {"model": model_state, "ema": jax.tree.map(_float32, ema)}
    if self.config.moco.queue_size:
      state.update(random_queue(jax.random.fold_in(rng, 1), self.config.moco.queue_size,
                                self.config.model.head_dim))
    return params, state

  def loss(self, params, state, batch, rng, step):
    cfg = self.config.moco
    rng_views, rng_shuffle = jax.random.split(rng)
    (x1, x2), _ = self.views(rng_views, batch)
    # (query view, key view) pairs; every view is its own forward pass, as in MoCo's code.
    pairs = [(x1, x2), (x2, x1)] if cfg.symmetric else [(x1, x2)]
    model_state, ema = state["model"], state["ema"]
    ema_model = ema["model"]
    queue = state.get("queue")
    t = self.config.loss.temperature
    terms, keys = [], []
    for i, (xq, xk) in enumerate(pairs):
      (_, q), model_state = grouped_forward(self.model, params, model_state, xq, self.groups)
      perm = (jax.random.permutation(jax.random.fold_in(rng_shuffle, i), xk.shape[0])
              if self.groups > 1 else None)
      (_, k), ema_model = grouped_forward(self.model, ema["params"], ema_model, xk,
                                          self.groups, perm, predict=False)
      k = jax.lax.stop_gradient(numerics.l2_normalize(k))
      terms.append(losses.info_nce(q, k, t, queue))
      keys.append(k)
    loss = sum(terms) / len(terms) if queue is not None else 2 * t * sum(terms)
    new_state = {**state, "model": model_state, "ema": {**ema, "model": ema_model}}
    if queue is not None:
      new_state["queue"], new_state["queue_ptr"] = enqueue(queue, state["queue_ptr"],
                                                           jnp.concatenate(keys))
    return loss, (new_state, {})

  def after_update(self, params, state, step):
    cfg = self.config.moco
    m = momentum_at(step, cfg.momentum, cfg.get("momentum_final", cfg.momentum),
                    self.schedule.total_steps)
    ema = state["ema"]
    # In the EMA's own dtype: a state of other dtypes than the run's cannot be restored.
    ema_params = jax.tree.map(lambda e, p: (m * e + (1 - m) * p).astype(e.dtype), ema["params"],
                              {k: params[k] for k in ema["params"]})
    return params, {**state, "ema": {**ema, "params": ema_params}}

  def features(self, params, state, images):
    (h, _), _ = base.forward(self.model, params, state["model"], self.eval_view(images),
                             train=False, predict=False)
    return h
