r"""Image-text losses: softmax CLIP and sigmoid SigLIP, full and chunked-ring.

Notation: N image-text pairs of the GLOBAL batch, x_i and y_j the l2-normalised
image and text embeddings, t > 0 the learned inverse temperature, b the learned
bias (sigmoid only), s_ij = t x_i·y_j.

The full forms are written on global arrays: under jit with batch-sharded
inputs XLA all-gathers the embeddings and every device holds a b×N slice of
the logits (b = N / devices). `sigmoid_clip_ring` is SigLIP's chunked
implementation: each device only ever holds a b×b block.
"""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from big_contrast import sharding
from big_contrast.numerics import HIGHEST
from big_contrast.numerics import l2_normalize


def softmax_clip(zimg, ztxt, t):
  r"""CLIP's symmetric InfoNCE (Radford et al. 2021, arXiv:2103.00020, Fig. 3).

    L = -1/(2N) Σ_i [ log( e^{s_ii} / Σ_j e^{s_ij} ) + log( e^{s_ii} / Σ_j e^{s_ji} ) ]

  Args:
    zimg, ztxt: [N, D] image and text embeddings (need not be normalised).
    t: scalar inverse temperature (exp of CLIP's learned log-scale).
  Returns:
    Scalar loss.
  """
  x, y = l2_normalize(zimg), l2_normalize(ztxt)
  logits = t * jnp.matmul(x, y.T, precision=HIGHEST)
  diag = jnp.diagonal(logits)
  i2t = jax.nn.logsumexp(logits, axis=1) - diag
  t2i = jax.nn.logsumexp(logits, axis=0) - diag
  return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))


def _sigmoid_block(x, y, t, b, positive_diagonal):
  """Σ over a block of pairs of -log σ(z_ij (t x_i·y_j + b)); z_ij = +1 on the diagonal if
  `positive_diagonal` (the block holds the matching pairs), else -1."""
  logits = t * jnp.matmul(x, y.T, precision=HIGHEST) + b
  eye = jnp.eye(x.shape[0], y.shape[0], dtype=bool) & positive_diagonal
  return -jnp.sum(jax.nn.log_sigmoid(jnp.where(eye, logits, -logits)))


def sigmoid_clip(zimg, ztxt, t, b):
  r"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023, arXiv:2303.15343, Alg. 1).

    L = -1/N Σ_i Σ_j log σ( z_ij (t x_i·y_j + b) ),  z_ij = 1 if i = j else -1

  Every pair is an independent binary classification; the sum runs over all
  N² pairs and is normalised by N (not N²), as in the paper.

  Args:
    zimg, ztxt: [N, D] image and text embeddings (need not be normalised).
    t: scalar inverse temperature; b: scalar bias (SigLIP init: t = 10, b = -10).
  Returns:
    Scalar loss.
  """
  x, y = l2_normalize(zimg), l2_normalize(ztxt)
  return _sigmoid_block(x, y, t, b, True) / x.shape[0]


def sigmoid_clip_ring(zimg, ztxt, t, b, mesh):
  r"""`sigmoid_clip` computed in a ring over the mesh's batch axes (SigLIP §3.3).

  With P devices along the batch axes, device k holds images X_k and texts Y_k
  (b = N/P pairs each). For P steps it adds the loss of the b×b block
  (X_k, Y_current) — the positives only in step 0, where Y_current = Y_k — and
  then passes Y_current to its neighbour with `jax.lax.ppermute`. Each block is
  rematerialised in the backward pass, so no device ever holds more than one
  b×b block of logits (the full form holds b×N); what travels is the b×D text
  chunk. The result equals `sigmoid_clip` on the global batch.

  Call it under jit on global arrays sharded over the batch axes (or on plain
  arrays: shard_map splits them).

  Args:
    zimg, ztxt: [N, D] image and text embeddings of the global batch.
    t, b: scalar inverse temperature and bias.
    mesh: the device mesh; the ring runs over `sharding.batch_axes(mesh)`.
  Returns:
    Scalar loss, replicated.
  """
  axes = sharding.batch_axes(mesh)
  num = sharding.num_batch_shards(mesh)
  if zimg.shape[0] % num:
    raise ValueError(f"sigmoid_clip_ring: the batch of {zimg.shape[0]} pairs does not split "
                     f"over the {num} devices of the batch axes {axes}.")
  ring = [(i, (i + 1) % num) for i in range(num)]
  block = jax.checkpoint(_sigmoid_block, static_argnums=(4,))

  def local(x, y, t, b):
    x, y = l2_normalize(x), l2_normalize(y)
    total = block(x, y, t, b, True)

    def step(carry, _):
      y, total = carry
      y = jax.lax.ppermute(y, axes, ring)
      return (y, total + block(x, y, t, b, False)), None

    (_, total), _ = jax.lax.scan(step, (y, total), None, length=num - 1)
    return jax.lax.psum(total, axes) / (x.shape[0] * num)

  spec = P(axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P(), P()),
                       out_specs=P())(zimg, ztxt, t, b)
