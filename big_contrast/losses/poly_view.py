r"""Poly-view contrastive losses: M > 2 related views per sample.

Shidani, Hjelm, Ramapuram, Webb, Dhekane, Busbridge, "Poly-View Contrastive
Learning", ICLR 2024, arXiv:2403.05490.

Notation (the paper's): N samples i, j in the GLOBAL batch, M views α, β, γ of
each; x̃_{i,α} the l2-normalised embedding of view α of sample i and the critic
f(x̃_{i,α}, x̃_{j,γ}) = x̃_{i,α}·x̃_{j,γ} / τ. Every one of the M·N views is an
anchor; the other M-1 views of its own sample are its positives; the M·(N-1)
views of the other samples are its negatives. The objectives differ in how the
M-1 positives of an anchor are combined and in what the denominators hold.

At M = 2 the three objectives coincide, EXACTLY (no additive constant, no
scale), with SimCLR's NT-Xent over the 2N views (`info_nce.nt_xent`): there is
a single positive, and every denominator holds it plus the 2(N-1) views of the
other samples. For M > 2, per anchor, multicrop ≥ geometric ≥ arithmetic.

Provenance: the full paper text could not be read offline. The per-pair term
and the geometric aggregation below agree with an independent implementation
of the paper's loss (the PVC baseline of Koromilas et al. 2025,
arXiv:2507.06979): a softmax over all M·N views per (anchor α, target β) with
the anchor's own sample masked out except view β, averaged over β. Arithmetic
PVC follows the paper's definition as the log of the arithmetic mean of the
same per-pair terms (the form of its Figure 1a); that one has no second
source here.
"""
import jax
import jax.numpy as jnp

from big_contrast.losses.info_nce import contrastive
from big_contrast.numerics import HIGHEST
from big_contrast.numerics import l2_normalize

OBJECTIVES = ("geometric", "arithmetic", "multicrop")


def pairwise_log_probs(z, temperature=0.1):
  r"""log ℓ_{i,α,β}: the per-pair InfoNCE term of the poly-view objectives.

    ℓ_{i,α,β} = exp f(x̃_{i,α}, x̃_{i,β})
                / ( exp f(x̃_{i,α}, x̃_{i,β}) + Σ_{j≠i} Σ_{γ=1}^{M} exp f(x̃_{i,α}, x̃_{j,γ}) )

  The denominator holds the pair's own positive and every view of every other
  sample; the anchor itself and its other M-2 positives are left out (they are
  not negatives). The paper's bound carries an extra factor K (the number of
  contrasted terms) inside ℓ; it only shifts the objective by a constant and is
  dropped here, as in NT-Xent.

  Args:
    z: [M, N, D] embeddings (need not be normalised; normalised in float32).
    temperature: τ.
  Returns:
    [M, M, N] array indexed [α, β, i]; its α = β entries are meaningless.
  """
  m, n, d = z.shape
  z = l2_normalize(z)
  flat = z.reshape(m * n, d)
  logits = jnp.matmul(flat, flat.T, precision=HIGHEST) / temperature
  logits = logits.reshape(m, n, m, n)  # [α, i, γ, j]
  same_sample = jnp.eye(n, dtype=bool)[None, :, None, :]
  log_negatives = jax.nn.logsumexp(jnp.where(same_sample, -jnp.inf, logits), axis=(2, 3))
  positive = jnp.einsum("aid,bid->abi", z, z, precision=HIGHEST) / temperature
  return positive - jnp.logaddexp(positive, log_negatives[:, None, :])


def geometric_pvc(z, temperature=0.1):
  r"""Geometric PVC: log of the GEOMETRIC mean of the M-1 per-pair terms.

    L = -1/(N M) Σ_i Σ_α (1/(M-1)) Σ_{β≠α} log ℓ_{i,α,β}

  with ℓ from `pairwise_log_probs`. Args as there; returns a scalar.
  """
  m = z.shape[0]
  log_p = pairwise_log_probs(z, temperature)
  off_diagonal = ~jnp.eye(m, dtype=bool)[:, :, None]
  return -jnp.sum(jnp.where(off_diagonal, log_p, 0)) / (m * (m - 1) * z.shape[1])


def arithmetic_pvc(z, temperature=0.1):
  r"""Arithmetic PVC: log of the ARITHMETIC mean of the M-1 per-pair terms.

    L = -1/(N M) Σ_i Σ_α log( (1/(M-1)) Σ_{β≠α} ℓ_{i,α,β} )

  with ℓ from `pairwise_log_probs`. By AM-GM it is ≤ `geometric_pvc` (as an
  MI lower bound, -L is the larger, tighter one). Writing Σ_β instead of the
  mean would shift it by -log(M-1), which is 0 at M = 2. Args as there; returns a scalar.
  """
  m = z.shape[0]
  log_p = pairwise_log_probs(z, temperature)
  off_diagonal = ~jnp.eye(m, dtype=bool)[:, :, None]
  log_mean = jax.nn.logsumexp(jnp.where(off_diagonal, log_p, -jnp.inf), axis=1) - jnp.log(m - 1)
  return -jnp.mean(log_mean)


def multicrop(z, temperature=0.1):
  r"""Multi-crop baseline: SimCLR over all M·N views, each positive its own term.

    L = -1/(N M (M-1)) Σ_i Σ_α Σ_{β≠α} log( exp f(x̃_{i,α}, x̃_{i,β})
                                             / Σ_{(j,γ)≠(i,α)} exp f(x̃_{i,α}, x̃_{j,γ}) )

  Unlike the PVC objectives, the other M-2 positives of the anchor sit in the
  denominator as if they were negatives. The paper's point (its Fig. 1a) is
  that multi-crop still bounds the two-view MI I(x; y), only with lower
  variance, whereas PVC bounds the one-vs-rest MI I(x_α; X_{≠α}), which grows
  with M. It is `contrastive` with ids = sample index.
  Args as `pairwise_log_probs`; returns a scalar.
  """
  m, n, d = z.shape
  return contrastive(z.reshape(m * n, d), jnp.tile(jnp.arange(n), m), temperature)


_OBJECTIVE_FNS = {"geometric": geometric_pvc, "arithmetic": arithmetic_pvc, "multicrop": multicrop}


def poly_view_loss(z, temperature=0.1, objective="geometric"):
  r"""Poly-view contrastive loss of M views of N samples (arXiv:2403.05490).

  Call it on the GLOBAL batch: under jit with sharded inputs XLA inserts the
  all-gathers, so every anchor sees all M·(N-1) negatives.

  Args:
    z: [M, N, D] embeddings of M views of N samples (need not be normalised).
    temperature: τ.
    objective: "geometric" (`geometric_pvc`), "arithmetic" (`arithmetic_pvc`)
      or "multicrop" (`multicrop`); all equal NT-Xent at M = 2.
  Returns:
    Scalar mean loss.
  Raises:
    ValueError: unknown objective (config.loss.objective) or M < 2
      (config.num_views).
  """
  if objective not in _OBJECTIVE_FNS:
    raise ValueError(f"config.loss.objective must be one of {OBJECTIVES} for poly_view, "
                     f"got {objective!r}")
  if z.ndim != 3:
    raise ValueError(f"poly_view_loss expects z of shape [M, N, D], got {z.shape}")
  if z.shape[0] < 2:
    raise ValueError(f"config.num_views must be >= 2 for poly_view, got M={z.shape[0]}")
  return _OBJECTIVE_FNS[objective](z, temperature)
