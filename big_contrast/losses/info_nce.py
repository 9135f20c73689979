"""The InfoNCE family: NT-Xent (SimCLR), SupCon, DCL and MoCo's queue form.

One function, `contrastive`, covers the in-batch losses: every embedding is an
anchor, its positives are the other embeddings with the same id, everything
else in the GLOBAL batch is a negative. Call it on global arrays under jit;
XLA inserts the all-gathers.
"""
import jax
import jax.numpy as jnp

from big_contrast.numerics import HIGHEST
from big_contrast.numerics import l2_normalize


def contrastive(z, ids, temperature=0.1, decoupled=False):
  r"""Multi-positive InfoNCE over a batch of embeddings.

  With z_i l2-normalised, s_ik = z_i·z_k / τ, P(i) = {p ≠ i : id_p = id_i} and
  D(i) the denominator set:

    L = 1/|I| Σ_i  -1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip) / Σ_{k∈D(i)} exp(s_ik) )

  - D(i) = {k ≠ i}: with ids = sample index over two views this is NT-Xent
    (Chen et al. 2020, SimCLR, arXiv:2002.05709, eq. 1); with ids = class
    labels it is SupCon's L_out (Khosla et al. 2020, arXiv:2004.11362, eq. 2);
    with ids = sample index over M views it is the multi-crop extension.
  - decoupled=True, D(i) = {k ≠ i} \ P(i): DCL (Yeh et al. 2022, "Decoupled
    Contrastive Learning", arXiv:2110.06848, eq. 6), positives removed from
    the denominator.
  Anchors without any positive (or, with DCL, without any negative) are left
  out of the mean; official SupCon counts them as 0 in it.

  Args:
    z: [N, D] embeddings (all views stacked).
    ids: [N] integers; equal ids are positives of each other.
    temperature: τ.
    decoupled: DCL's denominator.
  """
  z = l2_normalize(z)
  logits = jnp.matmul(z, z.T, precision=HIGHEST) / temperature
  self_mask = jnp.eye(z.shape[0], dtype=bool)
  positive = (ids[:, None] == ids[None, :]) & ~self_mask
  excluded = self_mask | positive if decoupled else self_mask
  log_denominator = jax.nn.logsumexp(jnp.where(excluded, -jnp.inf, logits), axis=-1)
  num_pos = positive.sum(-1)
  mean_pos_logit = jnp.where(positive, logits, 0).sum(-1) / jnp.maximum(num_pos, 1)
  per_anchor = log_denominator - mean_pos_logit
  # Anchors with no positive, or (DCL) nothing left in the denominator, carry no signal.
  has_pos = (num_pos > 0) & jnp.isfinite(log_denominator)
  per_anchor = jnp.where(has_pos, per_anchor, 0)
  return jnp.sum(jnp.where(has_pos, per_anchor, 0)) / jnp.maximum(has_pos.sum(), 1)


def nt_xent(z1, z2, temperature=0.1, decoupled=False):
  """SimCLR's NT-Xent for two views [N, D] each: `contrastive` with ids = sample index.

  Each of the 2N anchors has one positive and 2N-2 negatives (see `contrastive`).
  """
  n = z1.shape[0]
  return contrastive(jnp.concatenate([z1, z2]), jnp.tile(jnp.arange(n), 2), temperature,
                     decoupled)


def info_nce(q, k, temperature=0.2, queue=None):
  r"""InfoNCE of queries against their keys (MoCo, He et al. 2019, arXiv:1911.05722, eq. 1).

    L = -1/N Σ_i log( exp(q_i·k_i/τ) / (Σ_j exp(q_i·k_j/τ) + Σ_m exp(q_i·u_m/τ)) )

  Keys k_j (j ≠ i) of the global batch are negatives (MoCo v3, Chen et al.
  2021, arXiv:2104.02057, eq. 1); MoCo v1/v2 use only the queue u instead:
  pass `queue` and the in-batch keys other than k_i are left out. No gradient
  flows into k or the queue (they come from the momentum encoder).

  Args:
    q: [N, D] queries; k: [N, D] keys; queue: optional [K, D] negatives.
  """
  q, k = l2_normalize(q), jax.lax.stop_gradient(l2_normalize(k))
  if queue is None:
    logits = jnp.matmul(q, k.T, precision=HIGHEST) / temperature
    labels = jnp.arange(q.shape[0])
    log_prob = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_prob, labels[:, None], axis=-1))
  queue = jax.lax.stop_gradient(l2_normalize(queue))
  positive = jnp.sum(q * k, -1, keepdims=True) / temperature
  negatives = jnp.matmul(q, queue.T, precision=HIGHEST) / temperature
  logits = jnp.concatenate([positive, negatives], axis=-1)
  return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[:, 0])
