"""SwAV (Caron et al. 2020, arXiv:2006.09882): swapped prediction of Sinkhorn cluster codes.

Views: `config.num_views` large crops (their codes are the targets) plus
`config.multicrop.num_small` small crops. Features z are l2-normalised and
scored against K l2-normalised prototypes (renormalised after every optimizer
step); the codes are computed with Sinkhorn-Knopp over the GLOBAL batch
(losses.sinkhorn). Optionally, features of past batches (a queue, filled from
the start and used from `swav.queue_start_epoch` once it is full, as in SwAV's
code: empty rows would distort the equal partition) join the Sinkhorn problem,
as SwAV does for small batches. The prototypes get no gradient and no optimizer step
during the first `swav.freeze_prototypes_epochs` epochs; their optimizer state starts
after (optim.make's `starts`), as SwAV's skip of a parameter without a gradient does.
"""
import jax
import jax.numpy as jnp

from big_contrast import losses
from big_contrast import models
from big_contrast import numerics
from big_contrast import settings
from big_contrast.methods import base


@base.register("swav")
class SwAV(base.Method):
  export = "encoder"

  @classmethod
  def settings(cls):
    return dict(base.view_settings(2), **base.MULTICROP_SETTINGS,
                model=models.encoder_settings(),
                loss=dict(temperature=settings.positive(0.1)),
                swav=dict(num_prototypes=settings.integer(3000, low=1),
                          epsilon=settings.positive(0.05),
                          sinkhorn_iterations=settings.integer(3, low=1),
                          queue_size=settings.integer(0, low=0),
                          queue_start_epoch=settings.number(15.0, low=0),
                          freeze_prototypes_epochs=settings.number(1.0, low=0)))

  def __init__(self, config, schedule, mesh=None, tokenizer=None):
    super().__init__(config, schedule, mesh, tokenizer)
    cfg = config.swav
    self.model = base.encoder(config.model)
    if cfg.queue_size and cfg.queue_size % config.batch_size:
      raise ValueError(f"config.swav.queue_size={cfg.queue_size} must be a multiple of "
                       f"config.batch_size={config.batch_size}.")
    self.freeze_steps = int(cfg.freeze_prototypes_epochs * schedule.steps_per_epoch)
    # The queue gains batch_size rows per step; it joins once full and past its start.
    self.queue_start = max(int(cfg.queue_start_epoch * schedule.steps_per_epoch),
                           cfg.queue_size // config.batch_size)

  def param_starts(self):
    return (("prototypes", self.freeze_steps),)

  def init(self, rng, images):
    rng_model, rng_protos = jax.random.split(rng)
    encoder, model_state = base.init_model(self.model, rng_model, self.eval_view(images))
    prototypes = jax.random.normal(rng_protos, (self.config.model.head_dim,
                                                self.config.swav.num_prototypes))
    params = {"encoder": encoder, "prototypes": numerics.l2_normalize(prototypes, axis=0)}
    state = {"model": model_state}
    if self.config.swav.queue_size:
      state["queue"] = jnp.zeros((self.config.num_views, self.config.swav.queue_size,
                                  self.config.model.head_dim))
    return params, state

  def loss(self, params, state, batch, rng, step):
    cfg = self.config.swav
    z, model_state = base.project_views(self.model, params["encoder"], state["model"],
                                        *self.views(rng, batch))
    z = numerics.l2_normalize(z)                                    # [V, B, D]
    prototypes = params["prototypes"]
    prototypes = jnp.where(step < self.freeze_steps, jax.lax.stop_gradient(prototypes),
                           prototypes)
    scores = jnp.matmul(z, prototypes, precision=numerics.HIGHEST)    # [V, B, K]
    swav = lambda queue_scores: losses.swav_loss(
        scores, self.config.num_views, self.config.loss.temperature, cfg.epsilon,
        cfg.sinkhorn_iterations, queue_scores)
    new_state = {**state, "model": model_state}
    if "queue" in state:
      queue = state["queue"]
      queue_scores = jax.lax.stop_gradient(
          jnp.matmul(queue, prototypes, precision=numerics.HIGHEST))
      loss = jax.lax.cond(step >= self.queue_start, lambda: swav(queue_scores),
                          lambda: swav(None))
      # Newest first; the oldest batch falls off the end.
      new_keys = jax.lax.stop_gradient(z[:self.config.num_views])
      new_state["queue"] = jnp.concatenate([new_keys, queue[:, :-new_keys.shape[1]]], axis=1)
    else:
      loss = swav(None)
    return loss, (new_state, {})

  def after_update(self, params, state, step):
    return {**params, "prototypes": numerics.l2_normalize(params["prototypes"], axis=0)}, state

  def features(self, params, state, images):
    (h, _), _ = base.forward(self.model, params["encoder"], state["model"],
                             self.eval_view(images), train=False)
    return h
