"""NT-Xent, the normalized temperature-scaled cross entropy of SimCLR."""
import jax
import jax.numpy as jnp


def nt_xent(z1, z2, temperature=0.1):
  r"""NT-Xent loss (Chen et al. 2020, "A Simple Framework for Contrastive
  Learning of Visual Representations", arXiv:2002.05709, eq. 1).

  With z the 2N l2-normalised embeddings of both views and sim(u, v) = u·v,
  each anchor i has one positive p(i) (its other view) and 2N-2 negatives:

    l_i = -log( exp(sim(z_i, z_p(i)) / τ) / Σ_{k≠i} exp(sim(z_i, z_k) / τ) )
    L   = 1/(2N) Σ_i l_i

  Args:
    z1, z2: [N, D] embeddings of the two views (need not be normalised). Call
      this on the GLOBAL batch: under jit with sharded inputs XLA inserts the
      all-gathers, so every device sees all 2N-2 negatives.
    temperature: τ.
  Returns:
    Scalar mean loss.
  """
  n = z1.shape[0]
  z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
  z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, -1, keepdims=True), 1e-12))
  logits = z @ z.T / temperature
  # Self-similarity is excluded from the denominator, not merely down-weighted.
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_prob, positives[:, None], axis=-1))
