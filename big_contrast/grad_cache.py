"""GradCache (Gao et al. 2021, arXiv:2101.06983): the full-batch contrastive gradient in
micro-batches, `config.micro_batches` = K > 1.

Plain gradient accumulation changes a contrastive objective: each micro-batch would only
see its own negatives. GradCache keeps the objective and splits only the memory:
  1. embed the K micro-batches one after another, keeping no activations;
  2. compute the loss L over the embeddings of the whole batch and its gradient
     g_e = dL/de w.r.t. every embedding e (and dL/dθ for parameters the loss uses
     directly, e.g. CLIP's temperature);
  3. re-run each micro-batch's forward pass and back-propagate g_e through it (a
     vector-Jacobian product), summing the parameter gradients:
       dL/dθ = ∂L/∂θ + Σ_k (∂e_k/∂θ)ᵀ g_{e_k}.
Activation memory is that of one micro-batch; the price is a second forward pass.

BatchNorm: each micro-batch is normalised with its own statistics (ghost BatchNorm, like
per-device BN without SyncBN), so with BatchNorm the step is that of K BN groups, not of
the full batch; the running averages get the mean of the K updates, as
moco.grouped_forward does. Without BatchNorm (ViT, text transformer, heads with
model.head_bn=False) the gradient equals the full-batch gradient up to float rounding.
"""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from big_contrast import optim
from big_contrast import sharding
from big_contrast.methods import base


def check(config, method, mesh):
  """Fails before any compile on a micro-batch setting the method or the mesh cannot run."""
  k = config.get("micro_batches", 1)
  if k <= 1:
    return
  if not isinstance(method, base.EmbeddingMethod):
    able = [n for n, cls in base.METHODS.items() if issubclass(cls, base.EmbeddingMethod)]
    raise ValueError(f"config.micro_batches={k}: GradCache needs a method whose loss is a "
                     f"function of per-example embeddings ({', '.join(able)}); "
                     f"{config.method!r} keeps queues or codes in its loss. Set it to 1.")
  shards = sharding.num_batch_shards(mesh)
  if config.batch_size % (k * shards):
    raise ValueError(f"config.batch_size={config.batch_size} must split into "
                     f"config.micro_batches={k} micro-batches of a multiple of the {shards} "
                     f"data-parallel shards; use a multiple of {k * shards}.")


def split(tree, k: int, mesh):
  """[N, ...] leaves -> [k, N/k, ...]; micro-batch i holds examples i, i+k, i+2k, ...

  The batch is sharded in contiguous rows, so strided micro-batches leave every
  device an equal share of each one (contiguous ones would idle all but a few).
  """
  spec = NamedSharding(mesh, P(None, sharding.batch_axes(mesh)))
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
      jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), spec), tree)


def merge(tree, mesh):
  """The inverse of `split`: [k, N/k, ...] -> [N, ...] in the original example order."""
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
      jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), sharding.batch_sharding(mesh)), tree)


def _mean_state(states):
  """One state from K micro-batch updates: floats averaged, anything else the last one.
  The mean is taken of the differences from the first: K equal copies (a locked tower's
  statistics, which train=False leaves alone) average to exactly that value, which a plain
  mean rounds off for K not a power of two."""
  return jax.tree.map(
      lambda s: s[0] + (s - s[0]).mean(0) if jnp.issubdtype(s.dtype, jnp.floating) else s[-1],
      states)


def value_and_grad(method, params, state, batch, rng, k: int, mesh, frozen=()):
  """((loss, (new_state, metrics)), grads) of `method` on `batch`, in `k` micro-batches.

  Same contract as jax.value_and_grad(method.loss, has_aux=True); `frozen`
  parameters (regexes) get no gradient, as in the plain step.
  """
  inputs = split(method.inputs(batch, rng), k, mesh)
  embed = lambda p, x: method.embed(optim.stop_frozen(p, frozen), state, x)

  _, (embeddings, states) = jax.lax.scan(lambda c, x: (c, embed(params, x)), None, inputs)
  loss_fn = lambda p, e: method.embedding_loss(optim.stop_frozen(p, frozen), e, batch)
  (loss, metrics), (grads, g_emb) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      params, merge(embeddings, mesh))

  def backward(acc, xs):
    x, g = xs
    _, vjp = jax.vjp(lambda p: embed(p, x)[0], params)
    return jax.tree.map(jnp.add, acc, vjp(g)[0]), None

  grads, _ = jax.lax.scan(backward, grads, (inputs, split(g_emb, k, mesh)))
  return (loss, (_mean_state(states), metrics)), grads
