"""Poly-view contrastive learning (Shidani et al. 2024, arXiv:2403.05490).

SimCLR's pipeline with `config.num_views` = M > 2 views per image and one of
the poly-view objectives (`config.loss.objective`: geometric, arithmetic or
multicrop) on the [M, N, D] projections of the GLOBAL batch.
"""
import jax.numpy as jnp

from big_contrast import losses
from big_contrast.losses import poly_view
from big_contrast.methods import simclr


class PolyView(simclr.SimCLR):

  def __init__(self, config, schedule):
    super().__init__(config, schedule)
    if config.loss.objective not in poly_view.OBJECTIVES:
      raise ValueError(f"config.loss.objective={config.loss.objective!r} is unknown; choose "
                       f"one of {poly_view.OBJECTIVES}.")
    if config.loss.get("positives", "instance") != "instance" or config.loss.get("decoupled"):
      raise ValueError("poly_view uses instance positives with its own denominators; unset "
                       "config.loss.positives (SupCon) and config.loss.decoupled (DCL).")
    if config.num_views < 2:
      raise ValueError(f"config.num_views={config.num_views}: poly-view needs at least 2.")

  def embedding_loss(self, params, embeddings, batch):
    z = jnp.swapaxes(embeddings, 0, 1)  # [M, N, D]
    return losses.poly_view_loss(z, self.config.loss.temperature, self.config.loss.objective), {}
