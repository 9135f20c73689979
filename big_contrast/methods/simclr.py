"""SimCLR (Chen et al. 2020) and its InfoNCE-family options: SupCon, DCL, multi-view.

All `config.num_views` views of the batch are embedded together and every
embedding contrasts against the whole global batch (losses.contrastive):
  config.loss.positives = "instance"  views of the same image (SimCLR, NT-Xent)
                          "label"     images of the same class (SupCon)
  config.loss.decoupled = True        positives out of the denominator (DCL)
"""
import jax.numpy as jnp

from big_contrast import losses
from big_contrast import models
from big_contrast import settings
from big_contrast.methods import base

POSITIVES = ("instance", "label")


@base.register("simclr")
class SimCLR(base.EmbeddingMethod):
  export = "encoder"

  @classmethod
  def settings(cls):
    return dict(base.view_settings(2), **base.MULTICROP_SETTINGS,
                model=models.encoder_settings(),
                loss=dict(temperature=settings.positive(0.1),
                          positives=settings.choice("instance", POSITIVES),
                          decoupled=settings.boolean(False)))

  @classmethod
  def label_setting(cls, config) -> str:
    if config.loss.get("positives", "instance") == "label":
      return "config.loss.positives='label'"
    return ""

  def __init__(self, config, schedule, mesh=None, tokenizer=None):
    super().__init__(config, schedule, mesh, tokenizer)
    self.model = base.encoder(config.model)

  def init(self, rng, images):
    params, model_state = base.init_model(self.model, rng, self.eval_view(images))
    return params, {"model": model_state}

  def inputs(self, batch, rng):
    large, small = self.views(rng, batch)
    return {"large": large, "small": small}

  def embed(self, params, state, inputs):
    """Projections [N, V, D] of the V views of the N examples, and the new state."""
    z, model_state = base.project_views(self.model, params, state["model"], inputs["large"],
                                        inputs["small"])
    return jnp.swapaxes(z, 0, 1), {**state, "model": model_state}

  def embedding_loss(self, params, embeddings, batch):
    n, v = embeddings.shape[:2]
    cfg = self.config.loss
    ids = batch["label"] if cfg.get("positives", "instance") == "label" else jnp.arange(n)
    z = jnp.swapaxes(embeddings, 0, 1).reshape(v * n, -1)  # view-major, as the loss expects
    return losses.contrastive(z, jnp.tile(ids, v), cfg.temperature,
                              cfg.get("decoupled", False)), {}

  def features(self, params, state, images):
    (h, _), _ = base.forward(self.model, params, state["model"], self.eval_view(images),
                             train=False)
    return h
