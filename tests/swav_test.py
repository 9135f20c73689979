"""SwAV's Sinkhorn-Knopp and swapped prediction loss against numpy references
written from the paper's algorithm (arXiv:2006.09882, appendix A.1), and on 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from big_contrast.losses import swav
import reference


def _sinkhorn_reference(scores, eps, iters):
  """The paper's Sinkhorn-Knopp with explicit loops, in float64 and K x B layout."""
  q = np.exp(np.asarray(scores, np.float64) / eps).T  # [K, B]
  k, b = q.shape
  q /= q.sum()
  for _ in range(iters):
    for i in range(k):  # each prototype gets 1/K of the mass
      q[i] /= q[i].sum() * k
    for j in range(b):  # each sample gets 1/B of the mass
      q[:, j] /= q[:, j].sum() * b
  return (q * b).T


def _log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def _swav_reference(scores, num_large, t, eps, iters, codes=None):
  """Eq. 1-2 with loops over (assigned crop, predicting crop, sample); `codes`
  can be given to hold them fixed (they carry no gradient)."""
  v_total, b, _ = scores.shape
  total = 0.0
  for s in range(num_large):
    q = _sinkhorn_reference(scores[s], eps, iters) if codes is None else codes[s]
    sub = 0.0
    for v in range(v_total):
      if v == s:
        continue
      for i in range(b):
        sub -= np.sum(q[i] * _log_softmax(scores[v, i] / t)) / b
    total += sub / (v_total - 1)
  return total / num_large


@pytest.mark.parametrize("eps,iters", [(0.05, 3), (0.5, 1), (0.1, 10)])
def test_sinkhorn_matches_reference(eps, iters):
  rng = np.random.default_rng(0)
  scores = rng.uniform(-1, 1, size=(12, 5))
  np.testing.assert_allclose(swav.sinkhorn(scores, eps, iters),
                             _sinkhorn_reference(scores, eps, iters), rtol=1e-4, atol=1e-6)


def test_sinkhorn_rows_sum_to_one_and_prototypes_used_equally():
  rng = np.random.default_rng(1)
  b, k = 64, 8
  z, c = rng.normal(size=(b, 16)), rng.normal(size=(k, 16))
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  scores = z @ c.T  # cosine scores, as SwAV's normalised features and prototypes
  q = np.asarray(swav.sinkhorn(scores, 0.05, 50))
  assert q.shape == (b, k) and q.dtype == np.float32
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(q.sum(0), b / k, rtol=1e-3)
  # Without balancing the argmax alone would be far from uniform here.
  q3 = np.asarray(swav.sinkhorn(scores, 0.05, 3))
  raw = np.bincount(scores.argmax(1), minlength=k)
  assert np.abs(q3.sum(0) - b / k).max() < np.abs(raw - b / k).max()


def test_sinkhorn_is_stable_for_large_scores_and_has_no_gradient():
  rng = np.random.default_rng(2)
  scores = rng.uniform(-50, 50, size=(32, 10)).astype(np.float32)
  scores[0] = -50.0  # a sample far below every other score: exp underflows naively
  q = swav.sinkhorn(scores, 0.05, 3)
  assert np.all(np.isfinite(q))
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
  q_bf16 = swav.sinkhorn(jnp.asarray(scores, jnp.bfloat16), 0.05, 3)
  assert q_bf16.dtype == jnp.float32 and np.all(np.isfinite(q_bf16))
  grad = jax.grad(lambda s: jnp.sum(swav.sinkhorn(s) * jnp.arange(10.0)))(scores)
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("num_large,t", [(2, 0.1), (1, 0.5), (3, 0.2)])
def test_swav_loss_matches_reference(num_large, t):
  rng = np.random.default_rng(3)
  scores = rng.uniform(-1, 1, size=(4, 6, 5))
  np.testing.assert_allclose(swav.swav_loss(scores, num_large, t, 0.05, 3),
                             _swav_reference(scores, num_large, t, 0.05, 3), rtol=1e-5)


def test_swav_loss_gradient_flows_only_through_predictions():
  rng = np.random.default_rng(4)
  scores = rng.uniform(-1, 1, size=(3, 4, 3))
  num_large, t, eps, iters = 2, 0.3, 0.5, 3
  codes = [_sinkhorn_reference(scores[s], eps, iters) for s in range(num_large)]
  grad = jax.grad(lambda s: swav.swav_loss(s, num_large, t, eps, iters))(
      scores.astype(np.float32))
  fixed = reference.numeric_grad(lambda s: _swav_reference(s, num_large, t, eps, iters, codes), scores)
  np.testing.assert_allclose(grad, fixed, rtol=1e-3, atol=1e-5)
  # Differentiating through the codes as well would give a different gradient.
  through = reference.numeric_grad(lambda s: _swav_reference(s, num_large, t, eps, iters), scores)
  assert np.abs(through - fixed).max() > 1e-3


def test_swav_loss_with_queue():
  rng = np.random.default_rng(5)
  v, b, k, n_queue, num_large = 4, 6, 5, 10, 2
  scores = rng.uniform(-1, 1, size=(v, b, k)).astype(np.float32)
  queue = rng.uniform(-1, 1, size=(num_large, n_queue, k)).astype(np.float32)
  with_queue = swav.swav_loss(scores, num_large, queue_scores=queue)
  assert with_queue.shape == ()
  assert not np.isclose(with_queue, swav.swav_loss(scores, num_large))
  # Reference: Sinkhorn over the B + Q samples, keep the batch's B codes.
  codes = [_sinkhorn_reference(np.concatenate([scores[s], queue[s]]), 0.05, 3)[:b]
           for s in range(num_large)]
  assert not np.allclose(codes[0], _sinkhorn_reference(scores[0], 0.05, 3), atol=1e-3)
  np.testing.assert_allclose(with_queue, _swav_reference(scores, num_large, 0.1, 0.05, 3, codes),
                             rtol=1e-5)
  with pytest.raises(ValueError):
    swav.swav_loss(scores, num_large, queue_scores=queue[:1])


def test_sharded_over_8_devices_matches_one_device():
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rng = np.random.default_rng(6)
  v, b, k, num_large = 4, 32, 12, 2
  scores = rng.normal(size=(v, b, k)).astype(np.float32) * 2
  queue = rng.normal(size=(num_large, 16, k)).astype(np.float32)

  def loss_and_grad(s, qs):
    return jax.value_and_grad(lambda x: swav.swav_loss(x, num_large, 0.1, 0.05, 3, qs))(s)

  fns = {
      "codes": jax.jit(lambda s: swav.sinkhorn(s[0])),
      "plain": jax.jit(lambda s: loss_and_grad(s, None)),
      "queue": jax.jit(loss_and_grad),
  }
  one = jax.devices()[0]
  single = {
      "codes": fns["codes"](jax.device_put(scores, one)),
      "plain": fns["plain"](jax.device_put(scores, one)),
      "queue": fns["queue"](jax.device_put(scores, one), jax.device_put(queue, one)),
  }
  batch_sharded = NamedSharding(mesh, P(None, "data", None))
  s8 = jax.device_put(scores, batch_sharded)
  q8 = jax.device_put(queue, batch_sharded)
  assert len(s8.addressable_shards) == 8
  sharded = {
      "codes": fns["codes"](s8),
      "plain": fns["plain"](s8),
      "queue": fns["queue"](s8, q8),
  }
  for name in single:
    for a, c in zip(jax.tree.leaves(single[name]), jax.tree.leaves(sharded[name])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-5,
                                 err_msg=name)
  assert len(sharded["plain"][1].sharding.device_set) == 8
