"""Softmax CLIP and sigmoid SigLIP (full and ring) against loop references from the papers."""
import jax
import numpy as np
import pytest

from big_contrast import losses
from big_contrast import sharding
import reference
from tools import siglip_memory


def softmax_clip_reference(zi, zt, t):
  """CLIP: mean over i of the image->text and text->image cross-entropies."""
  x, y = reference.normalize(zi), reference.normalize(zt)
  n = len(x)
  total = 0.0
  for i in range(n):
    s_row = [t * x[i] @ y[j] for j in range(n)]
    s_col = [t * x[j] @ y[i] for j in range(n)]
    total += -np.log(np.exp(s_row[i]) / np.sum(np.exp(s_row)))
    total += -np.log(np.exp(s_col[i]) / np.sum(np.exp(s_col)))
  return total / (2 * n)


def sigmoid_clip_reference(zi, zt, t, b):
  """SigLIP Alg. 1: -1/N Σ_ij log σ(z_ij (t x_i·y_j + b)), z_ij = ±1."""
  x, y = reference.normalize(zi), reference.normalize(zt)
  n = len(x)
  total = 0.0
  for i in range(n):
    for j in range(n):
      z = 1.0 if i == j else -1.0
      total += -np.log(1 / (1 + np.exp(-z * (t * x[i] @ y[j] + b))))
  return total / n


def _pairs(n=6, d=5, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.normal(size=(n, d))


@pytest.mark.parametrize("t", [1.0, 14.3])
def test_softmax_clip_value_and_gradient(t):
  zi, zt = _pairs()
  np.testing.assert_allclose(losses.softmax_clip(zi, zt, t), softmax_clip_reference(zi, zt, t),
                             rtol=1e-5)
  for argnum in (0, 1):
    grad = jax.grad(losses.softmax_clip, argnums=argnum)(
        zi.astype(np.float32), zt.astype(np.float32), np.float32(t))
    f = ((lambda a: softmax_clip_reference(a, zt, t)) if argnum == 0 else
         (lambda a: softmax_clip_reference(zi, a, t)))
    numeric = reference.numeric_grad(f, (zi, zt)[argnum])
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("t,b", [(10.0, -10.0), (2.0, 0.5)])
def test_sigmoid_clip_value_and_gradient(t, b):
  zi, zt = _pairs()
  np.testing.assert_allclose(losses.sigmoid_clip(zi, zt, t, b),
                             sigmoid_clip_reference(zi, zt, t, b), rtol=1e-5)
  grads = jax.grad(losses.sigmoid_clip, argnums=(0, 1, 2, 3))(
      *(np.asarray(a, np.float32) for a in (zi, zt, t, b)))
  numeric = [reference.numeric_grad(lambda a: sigmoid_clip_reference(a, zt, t, b), zi),
             reference.numeric_grad(lambda a: sigmoid_clip_reference(zi, a, t, b), zt),
             reference.numeric_grad(lambda a: sigmoid_clip_reference(zi, zt, a, b),
                                    np.float64(t)),
             reference.numeric_grad(lambda a: sigmoid_clip_reference(zi, zt, t, a),
                                    np.float64(b))]
  for g, n in zip(grads, numeric):
    np.testing.assert_allclose(g, n, rtol=1e-3, atol=1e-5)


def test_t_and_b_receive_gradients_with_the_expected_sign():
  # Random embeddings at SigLIP's init: each of the N positives scores ≈ σ(-10) and
  # contributes ≈ -1/N to dL/db, the N² negatives ≈ σ(-10)/N each: dL/db ≈ -1.
  zi, zt = _pairs(16, 8)
  gt, gb = jax.grad(losses.sigmoid_clip, argnums=(2, 3))(
      zi.astype(np.float32), zt.astype(np.float32), 10.0, -10.0)
  np.testing.assert_allclose(gb, -1.0, atol=0.1)
  assert gt != 0
  # Perfectly aligned pairs: a larger t sharpens the softmax towards the positives.
  assert jax.grad(losses.softmax_clip, argnums=2)(zi, zi, 1.0) < 0


@pytest.mark.parametrize("mesh_axes,n", [((("data", -1),), 64), ((("data", 2), ("fsdp", 4)), 32),
                                         ((("data", 8),), 8)])
def test_ring_equals_full_in_value_and_gradient_on_8_devices(mesh_axes, n):
  mesh = sharding.make_mesh(mesh_axes)
  assert sharding.num_batch_shards(mesh) == 8
  zi, zt = (x.astype(np.float32) for x in _pairs(n, 16, seed=n))
  spec = sharding.batch_sharding(mesh)
  zi, zt = jax.device_put(zi, spec), jax.device_put(zt, spec)
  t, b = np.float32(10.0), np.float32(-10.0)
  full = jax.jit(jax.value_and_grad(losses.sigmoid_clip, argnums=(0, 1, 2, 3)))
  ring = jax.jit(jax.value_and_grad(lambda *a: losses.sigmoid_clip_ring(*a, mesh),
                                    argnums=(0, 1, 2, 3)))
  (vf, gf), (vr, gr) = full(zi, zt, t, b), ring(zi, zt, t, b)
  np.testing.assert_allclose(vr, vf, rtol=1e-5)
  for a, c in zip(gr, gf):
    a, c = np.asarray(a), np.asarray(c)
    assert np.max(np.abs(a - c)) <= 1e-5 * np.max(np.abs(c)), (a, c)


def test_ring_on_one_device_is_the_full_loss():
  mesh = sharding.make_mesh((("data", 1),))
  zi, zt = _pairs(8, 4)
  np.testing.assert_allclose(losses.sigmoid_clip_ring(zi, zt, 10.0, -10.0, mesh),
                             losses.sigmoid_clip(zi, zt, 10.0, -10.0), rtol=1e-6)


def test_ring_rejects_a_batch_that_does_not_split():
  mesh = sharding.make_mesh((("data", -1),))
  zi, zt = _pairs(12, 4)
  with pytest.raises(ValueError, match="does not split over the 8 devices"):
    losses.sigmoid_clip_ring(zi, zt, 10.0, -10.0, mesh)


def test_ring_memory_stays_near_one_block_while_full_grows_like_b_times_n():
  # Per-device temporaries of loss + gradient from XLA's compiled memory analysis
  # (tools/siglip_memory.py prints the table). Each device holds b = N/8 pairs.
  mesh = sharding.make_mesh((("data", -1),))
  d, n = 32, 4096
  b = n // 8
  full = siglip_memory.temp_bytes(losses.sigmoid_clip, n, d, mesh)
  ring = siglip_memory.temp_bytes(lambda *a: losses.sigmoid_clip_ring(*a, mesh), n, d, mesh)
  block, row = 4 * b * b, 4 * b * n  # bytes of one b×b block and of one b×N slice
  assert full >= row          # the full form materialises its b×N logits
  assert ring <= 6 * block    # the ring: a few b×b blocks ...
  assert 4 * ring < full      # ... far below the full form's
