"""Poly-view contrastive learning (Shidani et al. 2024, arXiv:2403.05490) and other
multi-view objectives.

SimCLR's pipeline with `config.num_views` = M >= 2 views per image and a multi-view
objective (`config.loss.objective`, any name in losses/objectives.py: the poly-view
geometric, arithmetic and sufficient-statistics objectives, multi-crop, MV-InfoNCE,
MV-DHEL, ...) on the [M, N, D] projections of the GLOBAL batch.
"""
import jax.numpy as jnp

from big_contrast import losses
from big_contrast import models
from big_contrast import settings
from big_contrast.losses.objectives import MULTI_VIEW
from big_contrast.methods import base
from big_contrast.methods import simclr


@base.register("poly_view")
class PolyView(simclr.SimCLR):

  @classmethod
  def settings(cls):
    # Instance positives with the objective's own denominators: no SupCon / DCL keys.
    return dict(base.view_settings(4), **base.MULTICROP_SETTINGS,
                model=models.encoder_settings(),
                loss=dict(temperature=settings.positive(0.1),
                          objective=settings.choice("geometric", MULTI_VIEW.names())))

  def embedding_loss(self, params, embeddings, batch):
    z = jnp.swapaxes(embeddings, 0, 1)  # [M, N, D]
    return losses.poly_view_loss(z, self.config.loss.temperature, self.config.loss.objective), {}
