r"""Multi-view contrastive losses with ONE term per sample: MV-InfoNCE and MV-DHEL.

Koromilas, Georgiou, Bouritsas, Giannakopoulos, Nicolaou, Panagakis, "A Principled
Framework for Multi-View Contrastive Learning", arXiv:2507.06979.

Notation as in `poly_view`: N samples i, j of the GLOBAL batch, M views α, β, γ;
x̃_{i,α} the l2-normalised embedding and f(x̃, ỹ) = x̃·ỹ / τ. Where the pairwise
objectives (`poly_view`) give every (anchor view, positive) its own log-term, these
put all M views of a sample into a single log-ratio, so a sample's views are pulled
together by one term rather than by M(M-1) competing ones.

Provenance: the paper's body could not be read here; the objectives are taken
from the authors' code, github.com/pakoromilas/Multi-View-CL at commit
c26ae77984b7e4b3b6b4568a6a58d028f6132c89, `models/losses.py` (`MVINFONCE`,
`MVDHEL`), and match it in value and gradient (tests/multi_view_test.py against
tests/data/multi_view_golden.json). That repository's README states both with
different sets (and without the leading minus); where the README and the code
differ the code is followed, and each docstring says how.
"""
import jax
import jax.numpy as jnp

from big_contrast.losses.objectives import MULTI_VIEW
from big_contrast.numerics import HIGHEST
from big_contrast.numerics import l2_normalize


def _positive_logits(z):
  """[M, M, N]: f(x̃_{i,α}, x̃_{i,β}) indexed [α, β, i] (z already normalised)."""
  return jnp.einsum("aid,bid->abi", z, z, precision=HIGHEST)


@MULTI_VIEW.register("mv_infonce")
def mv_infonce(z, temperature=0.1):
  r"""MV-InfoNCE: all positive pairs of a sample over all pairs that start at its views.

    L = -1/N Σ_i log( Σ_α Σ_{β≠α} exp f(x̃_{i,α}, x̃_{i,β})
                      / Σ_α Σ_{(j,γ)≠(i,α)} exp f(x̃_{i,α}, x̃_{j,γ}) )

  The numerator holds the M(M-1) ordered positive pairs (the authors' code: twice
  the sum over α < β). The denominator holds every similarity from one of the
  sample's views to any OTHER view in the batch: its own positives (so L ≥ 0) and
  the other samples' views, same-view ones included. The repository's README
  writes the denominator over γ ≠ α only (no same-view negatives); its code, which
  this follows, keeps them.

  At M = 2 it is -1/N Σ_i log( e^{f_i} / ((D_{i,1} + D_{i,2}) / 2) ) with D_{i,α}
  NT-Xent's denominator for anchor (i, α), while NT-Xent has the geometric mean
  √(D_{i,1} D_{i,2}) there: so it is ≥ `info_nce.nt_xent`, with equality iff
  D_{i,1} = D_{i,2} for every i.

  Args:
    z: [M, N, D] embeddings (need not be normalised; normalised in float32).
    temperature: τ.
  Returns:
    Scalar mean loss.
  """
  m, n, d = z.shape
  z = l2_normalize(z)
  flat = z.reshape(m * n, d)
  logits = jnp.matmul(flat, flat.T, precision=HIGHEST).reshape(m, n, m, n) / temperature
  # [α, i, γ, j]: drop only the anchor itself, (γ, j) = (α, i).
  self_pair = (jnp.eye(m, dtype=bool)[:, None, :, None] & jnp.eye(n, dtype=bool)[None, :, None, :])
  log_den = jax.nn.logsumexp(jnp.where(self_pair, -jnp.inf, logits), axis=(0, 2, 3))  # [N]
  positive = _positive_logits(z) / temperature
  off_diagonal = ~jnp.eye(m, dtype=bool)[:, :, None]
  log_num = jax.nn.logsumexp(jnp.where(off_diagonal, positive, -jnp.inf), axis=(0, 1))  # [N]
  return jnp.mean(log_den - log_num)


@MULTI_VIEW.register("mv_dhel")
def mv_dhel(z, temperature=0.1):
  r"""MV-DHEL: one alignment term over all view pairs, uniformity within each view.

    L = -1/N Σ_i [ log Σ_{α<β} exp f(x̃_{i,α}, x̃_{i,β})
                   - Σ_α log Σ_{j≠i} exp f(x̃_{i,α}, x̃_{j,α}) ]

  i.e. -1/N Σ_i log( Σ_{α<β} e^{f(x̃_{i,α}, x̃_{i,β})} / Π_α Σ_{j≠i} e^{f(x̃_{i,α}, x̃_{j,α})} ).
  Decoupled: no positive sits in a denominator, and a view's negatives are the
  other samples in the SAME view only, so the second (uniformity) term does not
  depend on how the views are paired at all. The authors' code sums the
  numerator over the M(M-1)/2 unordered pairs and leaves j = i out of the
  denominators; its README writes ordered pairs (a constant log 2) and j over all
  samples. This follows the code. It multiplies the M sums, which overflows
  float32 for large N·M at small τ; here they are added as logs.

  At M = 2 it is -1/N Σ_i [f(x̃_{i,1}, x̃_{i,2}) - log U_{i,1} - log U_{i,2}]
  (U the within-view sums), the repository's two-view `NTXentHPS`.

  Args:
    z: [M, N, D] embeddings (need not be normalised; normalised in float32).
    temperature: τ.
  Returns:
    Scalar mean loss.
  """
  m, n, _ = z.shape
  z = l2_normalize(z)
  within = jnp.einsum("aid,ajd->aij", z, z, precision=HIGHEST) / temperature  # [α, i, j]
  log_uniformity = jax.nn.logsumexp(
      jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, within), axis=-1)  # [α, i]
  positive = _positive_logits(z) / temperature
  upper = jnp.triu(jnp.ones((m, m), dtype=bool), k=1)[:, :, None]
  log_alignment = jax.nn.logsumexp(jnp.where(upper, positive, -jnp.inf), axis=(0, 1))  # [N]
  return jnp.mean(jnp.sum(log_uniformity, axis=0) - log_alignment)
