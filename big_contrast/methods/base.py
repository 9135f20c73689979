"""The one abstraction the training loop knows: a Method of pure functions."""
import abc
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_contrast import augment
from big_contrast import models
from big_contrast import registry
from big_contrast import settings
from input_pipeline import decode
from input_pipeline import sources

METHODS = registry.Registry("method", "config.method")


def register(name: str):
  """Class decorator: the method `config.method=name`."""
  def wrap(cls):
    cls.name = name
    return METHODS.register(name, cls)
  return wrap


def view_settings(num_views: int, choices=None) -> dict:
  """`config.num_views` large views and their `config.augment` / per-view overrides."""
  views = (settings.choice(num_views, choices) if choices else
           settings.integer(num_views, low=2))
  # augment_views: per-view overrides of augment, e.g. ({"blur_prob": 1.0}, ...).
  return dict(num_views=views, augment=augment.SETTINGS,
              augment_views=settings.overrides(augment.SETTINGS, "augment"))


# SwAV's multi-crop: extra small views of every image (num_small=0: none).
MULTICROP_SETTINGS = dict(multicrop=dict(
    num_small=settings.integer(0, low=0), crop_size=settings.integer(96, low=1),
    crop_scale=settings.interval((0.05, 0.14), 0.0, 1.0)))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """What a method may need to know about the run's length."""
  total_steps: int
  steps_per_epoch: int


class Method(abc.ABC):
  """A contrastive method, as pure functions over pytrees.

  init(rng, images) -> (params, state): `params` are trained by optax, `state`
    is everything else that persists (BatchNorm statistics, queues, EMA
    encoders) and is checkpointed like params.
  loss(params, state, batch, rng, step) -> (loss, (new_state, metrics)).
  after_update(params, state, step) -> (params, state): applied after the
    optimizer step (momentum encoders, prototype normalisation).
  param_starts() -> ((regex, step), ...): parameters that train from `step` on only (their
    optimizer state starts there: optim.make); () for none.
  features(params, state, images) -> [B, D] frozen features for evaluation.

  What a method declares about itself (the run, config validation and the tools read it):
    name       its `config.method` (set by @register)
    data       the examples it trains on: sources.IMAGES or sources.IMAGE_TEXT (then a
               tokenizer from `config.text.tokenizer` is passed to the constructor)
    export     what tools/export_pytorch.py writes: "encoder" (models.Encoder's backbone and
               heads), "two_tower", or None
    settings() the config sections it reads beyond the run's own (run_config.RUN_SETTINGS)
    label_setting(config)  the setting that makes it train on class labels, "" if none (the
               run refuses data without labels then: with every label -1, all the batch
               would be positives of each other, and collapse would minimise the loss)

  Constructed as cls(config, schedule, mesh, tokenizer): `mesh` is the run's, for the
  methods whose loss is laid out by hand over devices (the SigLIP ring).
  """
  name = None
  data = sources.IMAGES
  export = None

  @classmethod
  @abc.abstractmethod
  def settings(cls) -> dict:
    """The declaration (big_contrast/settings.py) of the sections this method reads."""

  @classmethod
  def label_setting(cls, config) -> str:
    del config
    return ""

  def param_starts(self) -> tuple:
    return ()

  def __init__(self, config, schedule: Schedule, mesh=None, tokenizer=None):
    self.config = config
    self.schedule = schedule
    self.mesh = mesh
    self.tokenizer = tokenizer
    self.mean = jnp.asarray(config.data.mean, jnp.float32)
    self.std = jnp.asarray(config.data.std, jnp.float32)

  def normalize(self, x):
    return (x - self.mean) / self.std

  def view_augment(self, i):
    """Augmentation of large view i: `config.augment` updated by `config.augment_views[i]`.

    Per-view overrides give asymmetric views, e.g. BYOL / MoCo v3's blur 1.0 / 0.1 and
    solarize 0 / 0.2 on the two views.
    """
    overrides = self.config.get("augment_views", ())
    if i >= len(overrides):
      return self.config.augment
    cfg = self.config.augment.copy_and_resolve_references()
    cfg.update(dict(overrides[i]))
    return cfg

  def _view_augments(self):
    """(large, small) augmentation configs, one per view.

    Small crops use `config.augment` at `multicrop.crop_size` with `multicrop.crop_scale`
    (SwAV's multi-crop).
    """
    large = [self.view_augment(i) for i in range(self.config.num_views)]
    mc = self.config.get("multicrop", None)
    small = []
    if mc and mc.num_small:
      small_cfg = self.config.augment.copy_and_resolve_references()
      small_cfg.update(crop_size=mc.crop_size, crop_scale=tuple(mc.crop_scale))
      small = [small_cfg] * mc.num_small
    return large, small

  def view_specs(self):
    """(large, small) crop geometry of the views, for sources that crop on the host."""
    return tuple([decode.ViewSpec(c.crop_size, tuple(c.crop_scale), tuple(c.crop_ratio))
                  for c in cfgs] for cfgs in self._view_augments())

  def views(self, rng, batch):
    """`config.num_views` large views, then `config.multicrop.num_small` small ones.

    Each is [B, S, S, C], normalised. From batch["image"] the device crops every view;
    batches of encoded sources carry "views" [B, V, S, S, C] (and "small_views") already
    cropped at full resolution on the host, and the device applies the rest.
    """
    large_cfgs, small_cfgs = self._view_augments()
    keys = jax.random.split(rng, len(large_cfgs) + len(small_cfgs))
    host = "views" in batch

    def view(key, cfg, name, i):
      images = batch[name][:, i] if host else batch["image"]
      return self.normalize(augment.augment_batch(key, images, cfg, crop=not host))

    large = [view(k, c, "views", i) for i, (k, c) in enumerate(zip(keys, large_cfgs))]
    small = [view(k, c, "small_views", i)
             for i, (k, c) in enumerate(zip(keys[len(large_cfgs):], small_cfgs))]
    return large, small

  def eval_view(self, images):
    """The deterministic evaluation view at the training crop size.

    Larger images are centre-cropped (the host resized them to `data.image_size`,
    e.g. 256 -> crop 224, the usual ImageNet protocol); smaller ones are resized.
    """
    size = self.config.augment.crop_size
    x = images.astype(jnp.float32) / 255.0
    h, w = x.shape[1:3]
    if h >= size and w >= size:
      top, left = (h - size) // 2, (w - size) // 2
      x = x[:, top:top + size, left:left + size]
    else:
      x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=True)
    return self.normalize(x)

  @abc.abstractmethod
  def init(self, rng, images):
    """See the class docstring."""

  @abc.abstractmethod
  def loss(self, params, state, batch, rng, step):
    """See the class docstring."""

  def after_update(self, params, state, step):
    return params, state

  @abc.abstractmethod
  def features(self, params, state, images):
    """See the class docstring."""


class EmbeddingMethod(Method):
  """A method whose loss is a function of per-example embeddings of the whole batch.

    inputs(batch, rng) -> pytree, leading axis = batch: the views (augmentation only)
    embed(params, state, inputs) -> (embeddings, new_state), leading axis = batch; one
      example's embedding depends on other examples only through BatchNorm statistics
    embedding_loss(params, embeddings, batch) -> (loss, metrics): the contrastive loss
      over the global batch (it may use params directly, e.g. CLIP's temperature)

  loss = embedding_loss(params, embed(params, state, inputs(batch, rng)), batch). The
  split is what GradCache (big_contrast/grad_cache.py, `config.micro_batches`) needs to
  embed micro-batches separately while the loss still sees every negative.
  """

  @abc.abstractmethod
  def inputs(self, batch, rng):
    """See the class docstring."""

  @abc.abstractmethod
  def embed(self, params, state, inputs):
    """See the class docstring."""

  @abc.abstractmethod
  def embedding_loss(self, params, embeddings, batch):
    """See the class docstring."""

  def loss(self, params, state, batch, rng, step):
    del step
    embeddings, state = self.embed(params, state, self.inputs(batch, rng))
    loss, metrics = self.embedding_loss(params, embeddings, batch)
    return loss, (state, metrics)


class Encoder(nn.Module):
  """Backbone f(·), projector g(·) and an optional predictor q(·) (MoCo v3, BYOL).

  Returns (h, z) where z = q(g(h)) when `predict`, else g(h).
  """
  backbone: nn.Module
  projector: nn.Module
  predictor: nn.Module | None = None

  def __call__(self, x, train: bool = True, predict: bool = True):
    h = self.backbone(x, train=train)
    return h, self.head(h, train=train, predict=predict)

  def encode(self, x, train: bool = True):
    return self.backbone(x, train=train)

  def head(self, h, train: bool = True, predict: bool = True):
    z = self.projector(h, train=train)
    if predict and self.predictor is not None:
      z = self.predictor(z, train=train)
    return z


def encoder(model_cfg, predictor: bool = False) -> Encoder:
  """Encoder from `config.model` (head_* for the projector, predictor_* for the predictor)."""
  dtypes = models.dtypes(model_cfg)
  projector = models.MLPHead(tuple(model_cfg.head_hidden_dims), model_cfg.head_dim,
                             use_bn=model_cfg.get("head_bn", True),
                             last_bn=model_cfg.get("head_last_bn", False), **dtypes)
  if predictor:
    # MoCo v3 ends its ViT predictor with a BatchNorm without affine (its ResNet one, not).
    predictor = models.MLPHead(tuple(model_cfg.predictor_hidden_dims), model_cfg.head_dim,
                               last_bn=model_cfg.get("predictor_last_bn", False), **dtypes)
  return Encoder(models.backbone(model_cfg), projector, predictor or None)


def forward(model, params, model_state, x, train=True, **kw):
  """Applies a Flax model; `model_state` holds its other collections (BatchNorm statistics).

  In training those collections are updated and returned; in evaluation they are read only.
  """
  variables = {"params": params, **model_state}
  if not train:
    return model.apply(variables, x, train=False, **kw), model_state
  out, new_state = model.apply(variables, x, train=True, mutable=list(model_state), **kw)
  return out, dict(new_state)


def project_views(model, params, model_state, large, small):
  """Projections [V, B, D] of the large then the small views.

  The backbone runs once per crop size (its BatchNorm over all views of that
  size, as SimCLR and SwAV do); the head runs once on the features of all views
  together, as in SwAV's code.
  """
  h, model_state = forward(model, params, model_state, jnp.concatenate(large),
                           method=Encoder.encode)
  if small:
    h_small, model_state = forward(model, params, model_state, jnp.concatenate(small),
                                   method=Encoder.encode)
    h = jnp.concatenate([h, h_small])
  z, model_state = forward(model, params, model_state, h, method=Encoder.head)
  return jnp.stack(jnp.split(z, len(large) + len(small))), model_state


def init_model(model, rng, x):
  """(params, other collections) of a Flax model."""
  variables = dict(model.init(rng, x, train=False))
  return variables.pop("params"), variables
