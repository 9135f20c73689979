r"""Poly-view contrastive losses: M > 2 related views per sample.

Shidani, Hjelm, Ramapuram, Webb, Dhekane, Busbridge, "Poly-View Contrastive
Learning", ICLR 2024, arXiv:2403.05490.

Notation (the paper's): N samples i, j in the GLOBAL batch, M views α, β, γ of
each; x̃_{i,α} the l2-normalised embedding of view α of sample i and the critic
f(x̃_{i,α}, x̃_{j,γ}) = x̃_{i,α}·x̃_{j,γ} / τ. Every one of the M·N views is an
anchor; the other M-1 views of its own sample are its positives; the M·(N-1)
views of the other samples are its negatives. The objectives differ in how the
M-1 positives of an anchor are combined and in what the denominators hold.

At M = 2 the four objectives coincide, EXACTLY (no additive constant, no
scale), with SimCLR's NT-Xent over the 2N views (`info_nce.nt_xent`): there is
a single positive, and every denominator holds it plus the 2(N-1) views of the
other samples. For M > 2, per anchor, multicrop ≥ geometric ≥ arithmetic.

Provenance: the paper's body could not be read here (only its abstract). The
per-pair term and the geometric aggregation below match, in value and gradient,
the one public implementation of the paper's loss, `PVCLoss` in the code of
Koromilas et al. 2025 (arXiv:2507.06979; github.com/pakoromilas/Multi-View-CL
at commit c26ae77984b7e4b3b6b4568a6a58d028f6132c89, `models/losses.py`): a
softmax over all M·N views per (anchor α, target β) with the anchor's own
sample masked out except view β, averaged over β (tests/multi_view_test.py).
That code's arithmetic form differs from ours by design (see `arithmetic_pvc`),
and `sufficient_statistics` rests on a reconstruction (see there).
"""
import jax
import jax.numpy as jnp

from big_contrast.losses.info_nce import contrastive
from big_contrast.losses.objectives import MULTI_VIEW
from big_contrast.numerics import HIGHEST
from big_contrast.numerics import l2_normalize

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


@MULTI_VIEW.register("geometric")
def geometric_pvc(z, temperature=0.1):
  r"""Geometric PVC: log of the GEOMETRIC mean of the M-1 per-pair terms.

    L = -1/(N M) Σ_i Σ_α (1/(M-1)) Σ_{β≠α} log ℓ_{i,α,β}

  with ℓ from `pairwise_log_probs`. Args as there; returns a scalar.
  """
  m = z.shape[0]
  log_p = pairwise_log_probs(z, temperature)
  off_diagonal = ~jnp.eye(m, dtype=bool)[:, :, None]
  return -jnp.sum(jnp.where(off_diagonal, log_p, 0)) / (m * (m - 1) * z.shape[1])


@MULTI_VIEW.register("arithmetic")
def arithmetic_pvc(z, temperature=0.1):
  r"""Arithmetic PVC: log of the ARITHMETIC mean of the M-1 per-pair terms.

    L = -1/(N M) Σ_i Σ_α log( (1/(M-1)) Σ_{β≠α} ℓ_{i,α,β} )

  with ℓ from `pairwise_log_probs`. By AM-GM it is ≤ `geometric_pvc` (as an
  MI lower bound, -L is the larger, tighter one). Writing Σ_β instead of the
  mean would shift it by -log(M-1), which is 0 at M = 2. Args as there; returns a scalar.

  The paper's form, as far as can be told here (its body could not be read):
  the two PVC objectives take the same per-anchor terms ℓ_{i,α,β} and differ
  only in which mean over β sits inside the log, per anchor (i, α), before any
  batch average: arithmetic here, geometric in `geometric_pvc`, which the
  public code reproduces. The one public implementation of this one
  (`PVCLoss(method="arithmetic")` of Multi-View-CL, commit c26ae77) computes
  instead, with L̄_{α,β} = -1/N Σ_i log ℓ_{i,α,β},

    L_pub = 1/M Σ_α [ log Σ_{β≠α} exp(L̄_{α,β}) - log N ]

  a log-sum-exp over β of the batch-MEAN losses (batch average inside,
  aggregation over β outside, applied to the losses rather than to ℓ), minus
  log N (N the batch size, where the mean over β would need log(M-1)). That
  is a soft MAXIMUM over β of per-β losses, between max_β L̄_{α,β} - log N and
  max_β L̄_{α,β} + log(M-1) - log N, so it shifts with the batch size and has no
  AM-GM relation to `geometric_pvc`. It is therefore not reproduced here; its
  value on the golden inputs is kept in tests/data/multi_view_golden.json and
  rebuilt from `pairwise_log_probs` in tests/multi_view_test.py.
  """
  m = z.shape[0]
  log_p = pairwise_log_probs(z, temperature)
  off_diagonal = ~jnp.eye(m, dtype=bool)[:, :, None]
  log_mean = jax.nn.logsumexp(jnp.where(off_diagonal, log_p, -jnp.inf), axis=1) - jnp.log(m - 1)
  return -jnp.mean(log_mean)


@MULTI_VIEW.register("multicrop")
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


@MULTI_VIEW.register("sufficient_statistics")
def sufficient_statistics(z, temperature=0.1):
  r"""Sufficient-statistics objective: each view against the MEAN of its sample's other views.

    x̄_{i,≠α} = 1/(M-1) Σ_{β≠α} x̃_{i,β}        (not re-normalised)
    L = 1/M Σ_α NT-Xent( {x̃_{i,α}}_i , {x̄_{i,≠α}}_i )

  where NT-Xent is SimCLR's over the 2N vectors {x̃_{i,α}} ∪ {x̄_{i,≠α}} with raw
  dot products over τ: every one of them is an anchor whose positive is its
  counterpart of the same sample and whose denominator holds all 2N-1 others.
  At M = 2, x̄_{i,≠α} is the other view and L is exactly `info_nce.nt_xent`.

  Provenance: the paper's abstract says its objectives come from "information
  maximization and sufficient statistics", but the text that defines this one
  could not be read here, so it is a reconstruction. Its reasoning: for views
  conditionally independent given the sample (and exponential-family
  likelihoods), the sufficient statistic of a SET of views is the sum of the
  per-view statistics, so the M-1 other views enter the critic through their
  mean embedding, and x̃_α is contrasted one-vs-rest against it. The exact form
  follows the one public implementation found of such an objective, the "AVG"
  baseline of Multi-View-CL (`NTXent(average=True)`, commit c26ae77), which it
  matches in value and gradient (tests/multi_view_test.py). NOT confirmed
  against the paper: whether x̄ is re-normalised, and whether the denominators
  are this symmetric 2N-way set.

  Args:
    z: [M, N, D] embeddings (need not be normalised; normalised in float32).
    temperature: τ.
  Returns:
    Scalar mean loss.
  """
  m, n, _ = z.shape
  z = l2_normalize(z)
  rest = (jnp.sum(z, axis=0, keepdims=True) - z) / (m - 1)  # [α, i, :] = x̄_{i,≠α}
  u = jnp.concatenate([z, rest], axis=1)  # [M, 2N, D]: per α, the anchors then their statistics
  logits = jnp.einsum("akd,ald->akl", u, u, precision=HIGHEST) / temperature
  log_prob = jax.nn.log_softmax(jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits), axis=-1)
  partner = jnp.roll(jnp.arange(2 * n), n)  # k <-> k ± N: a view and its own sample's mean
  return -jnp.mean(jnp.take_along_axis(log_prob, partner[None, :, None], axis=-1))


def poly_view_loss(z, temperature=0.1, objective="geometric"):
  r"""Poly-view contrastive loss of M views of N samples (arXiv:2403.05490).

  Call it on the GLOBAL batch: under jit with sharded inputs XLA inserts the
  all-gathers, so every anchor sees all M·(N-1) negatives.

  Args:
    z: [M, N, D] embeddings of M views of N samples (need not be normalised).
    temperature: τ.
    objective: a name in `objectives.MULTI_VIEW`: "geometric" (`geometric_pvc`),
      "arithmetic" (`arithmetic_pvc`), "multicrop" (`multicrop`),
      "sufficient_statistics" (`sufficient_statistics`), ...
  Returns:
    Scalar mean loss.
  Raises:
    ValueError: unknown objective (config.loss.objective) or M < 2
      (config.num_views).
  """
  fn = MULTI_VIEW.get(objective)
  if z.ndim != 3:
    raise ValueError(f"poly_view_loss expects z of shape [M, N, D], got {z.shape}")
  if z.shape[0] < 2:
    raise ValueError(f"config.num_views must be >= 2 for poly_view, got M={z.shape[0]}")
  return fn(z, temperature)
