"""Numerics shared by losses, models and evaluators."""
import jax
import jax.numpy as jnp

# Similarities at full float32 precision: at τ = 0.1, TF32/bf16 matmuls (the GPU/TPU
# defaults) put errors of ~1e-2 on the logits.
HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x, axis=-1):
  """x / ||x|| along `axis`, in float32 (norms below 1e-6 are treated as 1e-6)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis, keepdims=True), 1e-12))


def top_k_hits(scores, labels, valid=None, ks=(1, 5)) -> dict:
  """{k: number of rows whose label is among their k highest scores} over scores [..., C],
  labels [...] and the rows where `valid`; k beyond C counts every valid row."""
  ranked = jax.lax.top_k(scores, min(max(ks), scores.shape[-1]))[1]
  hit = ranked == labels[..., None]
  if valid is not None:
    hit = hit & valid[..., None]
  return {k: jnp.sum(hit[..., :k].any(-1)) for k in ks}
