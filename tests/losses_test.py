"""Losses against independent numpy references written from the papers' equations."""
import jax
import numpy as np
import pytest

from big_contrast import losses


def _nt_xent_reference(z1, z2, t):
  """Eq. 1 of SimCLR with explicit loops over anchors."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(z)
  total = 0.0
  for i in range(n2):
    p = (i + n2 // 2) % n2
    denom = sum(np.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
    total += -np.log(np.exp(z[i] @ z[p] / t) / denom)
  return total / n2


def _numeric_grad(f, x, eps=1e-4):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[idx] = eps
    g[idx] = (f(x + d) - f(x - d)) / (2 * eps)
  return g


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_matches_reference_value_and_gradient(t):
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 6, 5))
  np.testing.assert_allclose(losses.nt_xent(z1, z2, t), _nt_xent_reference(z1, z2, t), rtol=1e-5)
  grad = jax.grad(lambda a: losses.nt_xent(a, z2, t))(z1.astype(np.float32))
  numeric = _numeric_grad(lambda a: _nt_xent_reference(a, z2, t), z1)
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)


def test_nt_xent_is_low_for_aligned_views_and_finite():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(16, 32))
  aligned = float(losses.nt_xent(z, z + 1e-3, 0.1))
  shuffled = float(losses.nt_xent(z, rng.permutation(z), 0.1))
  assert aligned < 0.1 < shuffled
  assert np.isfinite(jax.grad(lambda a: losses.nt_xent(a, a, 0.1))(z.astype(np.float32))).all()
