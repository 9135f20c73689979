"""SimCLR (Chen et al. 2020): two augmented views, NT-Xent over the global batch."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from big_contrast import losses
from big_contrast import models
from big_contrast.methods.base import Method


class _Encoder(nn.Module):
  """Backbone f(·) and projector g(·); returns (h, z)."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool = True):
    h = self.backbone(x, train=train)
    return h, self.head(h, train=train)


class SimCLR(Method):

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    self.model = _Encoder(models.backbone(m),
                          models.MLPHead(tuple(m.head_hidden_dims), m.head_dim,
                                         dtype=jnp.dtype(m.get("dtype", "float32"))))

  def init(self, rng, images):
    variables = self.model.init(rng, self.eval_view(images), train=False)
    params = variables.pop("params")
    return params, dict(variables)

  def loss(self, params, state, batch, rng):
    rng1, rng2 = jax.random.split(rng)
    images = batch["image"]
    # Both views in one pass: BN statistics over all 2N views, as in SimCLR.
    x = jnp.concatenate([self.view(rng1, images), self.view(rng2, images)])
    (_, z), new_state = self.model.apply({"params": params, **state}, x, train=True,
                                         mutable=list(state))
    z1, z2 = jnp.split(z, 2)
    loss = losses.nt_xent(z1, z2, self.config.loss.temperature)
    return loss, (dict(new_state), {"loss": loss})

  def features(self, params, state, images):
    h, _ = self.model.apply({"params": params, **state}, self.eval_view(images), train=False)
    return h
