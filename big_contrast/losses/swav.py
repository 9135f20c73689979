"""SwAV: Sinkhorn-Knopp cluster codes and the swapped prediction loss."""
import math

import jax
import jax.numpy as jnp


def sinkhorn(scores, epsilon=0.05, iterations=3):
  r"""Soft cluster codes by Sinkhorn-Knopp (Caron et al. 2020, "Unsupervised
  Learning of Visual Features by Contrasting Cluster Assignments",
  arXiv:2006.09882, sec. 3.1 and appendix A.1).

  With C the K prototypes and Z the B features, the codes maximise
  Tr(Qᵀ CᵀZ) + ε H(Q) over the transportation polytope

    𝒬 = { Q ∈ R₊^{K×B} : Q 1_B = 1_K / K,  Qᵀ 1_K = 1_B / B },

  i.e. every prototype gets an equal share of the batch. The solution is
  Q* = Diag(u) exp(CᵀZ / ε) Diag(v); u and v come from alternating row
  (per-prototype, scaled to 1/K) and column (per-sample, scaled to 1/B)
  normalisations, starting from exp(CᵀZ / ε) / Σ exp(CᵀZ / ε). The codes are
  returned rescaled by B so that each sample's code sums to 1.

  The iteration is run in log space (logsumexp instead of exp-then-sum): the
  same arithmetic, but no entry underflows to 0 and no normalisation divides
  by 0, even for |scores / ε| in the thousands. Computed in float32.

  Args:
    scores: [B, K] prototype scores z·c of the GLOBAL batch. Sums over the
      batch axis are global: under jit with a sharded batch XLA inserts the
      all-reduce, so the codes are the same on 8 devices as on 1.
    epsilon: ε, the entropy weight (smaller is sharper).
    iterations: number of Sinkhorn-Knopp (row, column) sweeps.
  Returns:
    [B, K] float32 codes, each row sums to 1 (for iterations >= 1); no
    gradient flows through them.
  """
  scores = jax.lax.stop_gradient(scores)
  b, k = scores.shape
  log_q = scores.astype(jnp.float32) / epsilon
  log_q = log_q - jax.nn.logsumexp(log_q)  # total mass 1
  for _ in range(iterations):
    # Each prototype (a column here) gets mass 1/K, summed over the batch.
    log_q = log_q - jax.nn.logsumexp(log_q, axis=0, keepdims=True) - math.log(k)
    # Each sample (a row here) gets mass 1/B.
    log_q = log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - math.log(b)
  return jnp.exp(log_q + math.log(b))


def swav_loss(scores, num_large, temperature=0.1, epsilon=0.05,
              sinkhorn_iterations=3, queue_scores=None):
  r"""SwAV swapped prediction loss (Caron et al. 2020, arXiv:2006.09882, eq. 1-2).

  For every large crop s the codes q_s = sinkhorn(scores[s]) are predicted
  from every other crop t ≠ s through p_t = softmax(scores[t] / τ):

    ℓ(z_t, q_s) = -Σ_k q_s^{(k)} log p_t^{(k)}
    L = 1/(S (V-1)) Σ_{s<S} Σ_{t≠s} mean_b ℓ(z_{t,b}, q_{s,b})

  with S = num_large crops used for assignment (the official implementation's
  `crops_for_assign`) and V crops in all (large and small). The codes carry no
  gradient; it flows only through the predicted side p_t.

  Args:
    scores: [V, B, K] prototype scores (l2-normalised feature · prototype) of
      V crops of the GLOBAL batch; the first `num_large` are the large
      crops that produce codes.
    num_large: S, number of leading crops that produce codes.
    temperature: τ of the prediction softmax.
    epsilon: ε of Sinkhorn-Knopp.
    sinkhorn_iterations: Sinkhorn-Knopp sweeps.
    queue_scores: optional [num_large, Q, K] scores of queued features of the
      large crops, computed with the current prototypes. For crop s they are
      appended after scores[s] before Sinkhorn, so the equal partition is
      enforced over B + Q samples; only the first B codes are used.
  Returns:
    Scalar mean loss.
  """
  num_views, batch, _ = scores.shape
  if not 1 <= num_large <= num_views or num_views < 2:
    raise ValueError(f"need 1 <= num_large={num_large} <= V={num_views}, V >= 2")
  if queue_scores is not None and queue_scores.shape[0] != num_large:
    raise ValueError(f"queue_scores has {queue_scores.shape[0]} crops, "
                     f"expected num_large={num_large}")
  log_p = jax.nn.log_softmax(scores.astype(jnp.float32) / temperature, axis=-1)
  total = 0.0
  for s in range(num_large):
    assign = scores[s]
    if queue_scores is not None:
      assign = jnp.concatenate([assign, queue_scores[s].astype(assign.dtype)], axis=0)
    q = sinkhorn(assign, epsilon, sinkhorn_iterations)[:batch]
    # Cross entropy of q against every crop's prediction, except crop s itself.
    ce = -jnp.mean(jnp.sum(q[None] * log_p, axis=-1), axis=-1)  # [V]
    total = total + jnp.sum(jnp.where(jnp.arange(num_views) != s, ce, 0.0)) / (num_views - 1)
  return total / num_large
