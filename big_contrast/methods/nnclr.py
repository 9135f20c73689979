"""NNCLR (Dwibedi et al. 2021, arXiv:2104.14548): nearest neighbours as positives.

Each view's projection z is replaced by its nearest neighbour NN(z) in a support set Q (a
FIFO queue of past projections, in the method state) and that neighbour is predicted from
the other view through a predictor q(·): losses.nnclr_loss, symmetric over the two views.
The queue is filled with the l2-normalised projections of the first view of the GLOBAL
batch, as in the paper's pseudocode; it starts as random unit vectors (MoCo's start), so
the first |Q| / batch_size steps draw neighbours partly from noise.
"""
import jax
import jax.numpy as jnp

from big_contrast import losses
from big_contrast import models
from big_contrast import numerics
from big_contrast import settings
from big_contrast.methods import base
from big_contrast.methods import moco


def _project(module, h, train=True):
  return module.head(h, train=train, predict=False)


def _predict(module, z, train=True):
  return module.predictor(z, train=train)


@base.register("nnclr")
class NNCLR(base.Method):
  export = "encoder"

  @classmethod
  def settings(cls):
    return dict(base.view_settings(2, choices=(2,)),
                model=models.encoder_settings(predictor=True),
                loss=dict(temperature=settings.positive(0.1)),
                nnclr=dict(queue_size=settings.integer(98304, low=1)))

  def __init__(self, config, schedule, mesh=None, tokenizer=None):
    super().__init__(config, schedule, mesh, tokenizer)
    self.model = base.encoder(config.model, predictor=True)
    size = config.nnclr.queue_size
    if size % config.batch_size:
      raise ValueError(f"config.nnclr.queue_size={size} must be a multiple of "
                       f"config.batch_size={config.batch_size} (the projections enqueued per "
                       f"step); e.g. {config.batch_size * max(1, size // config.batch_size)}.")

  def init(self, rng, images):
    params, model_state = base.init_model(self.model, rng, self.eval_view(images))
    return params, {"model": model_state, **moco.random_queue(
        jax.random.fold_in(rng, 1), self.config.nnclr.queue_size, self.config.model.head_dim)}

  def loss(self, params, state, batch, rng, step):
    del step
    (x1, x2), _ = self.views(rng, batch)
    # One backbone pass over both views (BatchNorm over the 2N images, as SimCLR does).
    h, model_state = base.forward(self.model, params, state["model"], jnp.concatenate([x1, x2]),
                                  method=base.Encoder.encode)
    z, model_state = base.forward(self.model, params, model_state, h, method=_project)
    p, model_state = base.forward(self.model, params, model_state, z, method=_predict)
    (z1, z2), (p1, p2) = jnp.split(z, 2), jnp.split(p, 2)
    loss = losses.nnclr_loss(z1, z2, p1, p2, state["queue"], self.config.loss.temperature)
    queue, ptr = moco.enqueue(state["queue"], state["queue_ptr"],
                              jax.lax.stop_gradient(numerics.l2_normalize(z1)))
    return loss, ({**state, "model": model_state, "queue": queue, "queue_ptr": ptr}, {})

  def features(self, params, state, images):
    (h, _), _ = base.forward(self.model, params, state["model"], self.eval_view(images),
                             train=False, predict=False)
    return h
