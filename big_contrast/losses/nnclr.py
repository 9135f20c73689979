r"""NNCLR: nearest neighbours from a support set as positives.

Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor
Contrastive Learning of Visual Representations", ICCV, arXiv:2104.14548.

Notation: N samples of the GLOBAL batch, two views; z¹, z² ∈ R^{N×D} the
projections, p¹, p² the predictor outputs g(z), Q ∈ R^{|Q|×D} the support set
(a FIFO queue of past, l2-normalised projections, kept by the method), τ the
temperature. All similarities are cosine: x̂ = x / ||x||.
"""
import jax
import jax.numpy as jnp

from big_contrast.losses.clip import softmax_clip
from big_contrast.numerics import HIGHEST
from big_contrast.numerics import l2_normalize


def nearest_neighbour(z, support):
  r"""NN(z_i, Q) = argmax_{q∈Q} ẑ_i·q̂ (the paper's eq. 1), for every row of z.

  Returns the support row as stored (not re-normalised); ties go to the first
  row. No gradient flows through the result: the argmax is piecewise constant
  in z, and the support is a buffer, not a parameter.

  Args:
    z: [N, D] queries.
    support: [Q, D] support set.
  Returns:
    [N, D] the nearest support row of each query.
  """
  # Normalising both is a no-op on a normalised queue, and makes the choice a
  # cosine one even if a caller's support is not.
  similarity = jnp.matmul(l2_normalize(z), l2_normalize(support).T, precision=HIGHEST)
  index = jnp.argmax(similarity, axis=-1)
  return jax.lax.stop_gradient(jnp.take(support, index, axis=0))


def nnclr_loss(z1, z2, p1, p2, support, temperature=0.1):
  r"""NNCLR's symmetrised loss, both views, both directions (the paper's form).

  With n_i = NN(z_i, Q) of one view, p_k⁺ the predictions of the other view (the
  paper's §3 "Implementation details" puts the predictor output p⁺ in place of z⁺)
  and s_ik = n̂_i·p̂_k⁺ / τ, the paper's eq. 2 is the row cross-entropy

    ℓ_i = -log( e^{s_ii} / Σ_k e^{s_ik} ),

  and the same section makes it symmetric by adding the column term

    ℓ'_i = -log( e^{s_ii} / Σ_k e^{s_ki} ),

  so one ordered pair of views gives ½ mean_i (ℓ_i + ℓ'_i) = `softmax_clip(n, p⁺, 1/τ)`.
  Both orders are averaged (NN of view 1 predicted by view 2, and the converse):

    L = ½ [ clip(NN(z¹), p², 1/τ) + clip(NN(z²), p¹, 1/τ) ].

  Other implementations: solo-learn keeps only the rows ℓ_i, ½ [CE(NN(z¹)·p²ᵀ/τ)
  + CE(NN(z²)·p¹ᵀ/τ)]; lightly feeds (NN(z¹), p²) to SimCLR's NT-Xent, which
  adds NN-NN and p-p negatives to each denominator. Neither equals this.

  Gradients reach p¹ and p² only: the nearest neighbours are stop-gradient, so
  z reaches the loss only through the predictor p = g(z) (outside this function).

  Args:
    z1, z2: [N, D] projections of the two views (need not be normalised).
    p1, p2: [N, D] predictor outputs of the two views.
    support: [Q, D] support set (queue) the neighbours are drawn from.
    temperature: τ (the paper uses 0.1).
  Returns:
    Scalar loss.
  """
  # softmax_clip l2-normalises both arguments, as eq. 2's cosine similarities need.
  scale = 1.0 / temperature
  return 0.5 * (softmax_clip(nearest_neighbour(z1, support), p2, scale) +
                softmax_clip(nearest_neighbour(z2, support), p1, scale))
