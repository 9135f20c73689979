"""The one abstraction the training loop knows: a Method of pure functions."""
import abc

import jax
import jax.numpy as jnp

from big_contrast import augment


class Method(abc.ABC):
  """A contrastive method, as pure functions over pytrees.

  init(rng, images) -> (params, state): `params` are trained by optax, `state`
    is everything else that persists (BatchNorm statistics, queues, EMA
    encoders) and is checkpointed like params.
  loss(params, state, batch, rng) -> (loss, (new_state, metrics)).
  after_update(params, state, step) -> state: momentum/EMA updates.
  features(params, state, images) -> [B, D] frozen features for evaluation.
  """

  def __init__(self, config):
    self.config = config
    self.mean = jnp.asarray(config.data.mean, jnp.float32)
    self.std = jnp.asarray(config.data.std, jnp.float32)

  def normalize(self, x):
    return (x - self.mean) / self.std

  def view(self, rng, images, aug_cfg=None):
    """One randomly augmented, normalised view of a uint8 batch."""
    return self.normalize(augment.augment_batch(rng, images, aug_cfg or self.config.augment))

  def eval_view(self, images):
    """The deterministic evaluation view: the full image at the training crop size."""
    size = self.config.augment.crop_size
    x = images.astype(jnp.float32) / 255.0
    if x.shape[1:3] != (size, size):
      x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=True)
    return self.normalize(x)

  @abc.abstractmethod
  def init(self, rng, images):
    """See the class docstring."""

  @abc.abstractmethod
  def loss(self, params, state, batch, rng):
    """See the class docstring."""

  def after_update(self, params, state, step):
    return state

  @abc.abstractmethod
  def features(self, params, state, images):
    """See the class docstring."""
