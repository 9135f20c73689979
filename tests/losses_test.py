"""Losses against independent numpy references written from the papers' equations."""
import jax
import numpy as np
import pytest

from big_contrast import losses
import reference


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_matches_reference_value_and_gradient(t):
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 6, 5))
  np.testing.assert_allclose(losses.nt_xent(z1, z2, t), reference.nt_xent(z1, z2, t), rtol=1e-5)
  grad = jax.grad(lambda a: losses.nt_xent(a, z2, t))(z1.astype(np.float32))
  numeric = reference.numeric_grad(lambda a: reference.nt_xent(a, z2, t), z1)
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)


def test_nt_xent_is_low_for_aligned_views_and_finite():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(16, 32))
  aligned = float(losses.nt_xent(z, z + 1e-3, 0.1))
  shuffled = float(losses.nt_xent(z, rng.permutation(z), 0.1))
  assert aligned < 0.1 < shuffled
  assert np.isfinite(jax.grad(lambda a: losses.nt_xent(a, a, 0.1))(z.astype(np.float32))).all()


def _contrastive_reference(z, ids, t, decoupled):
  """SupCon's L_out (and DCL when decoupled) with explicit loops."""
  z = reference.normalize(z.astype(np.float64))
  losses_, n = [], len(z)
  for i in range(n):
    pos = [p for p in range(n) if p != i and ids[p] == ids[i]]
    if not pos:
      continue
    den = [k for k in range(n) if k != i and not (decoupled and k in pos)]
    log_den = np.log(sum(np.exp(z[i] @ z[k] / t) for k in den))
    losses_.append(np.mean([log_den - z[i] @ z[p] / t for p in pos]))
  return np.mean(losses_)


@pytest.mark.parametrize("decoupled", [False, True])
def test_supcon_and_dcl_match_reference(decoupled):
  rng = np.random.default_rng(2)
  z = rng.normal(size=(9, 4))
  ids = np.array([0, 1, 0, 2, 1, 0, 3, 2, 4])      # Sample 6 and 8 have no positive.
  got = losses.contrastive(z, ids, 0.3, decoupled)
  np.testing.assert_allclose(got, _contrastive_reference(z, ids, 0.3, decoupled), rtol=1e-5)
  grad = jax.grad(lambda a: losses.contrastive(a, ids, 0.3, decoupled))(z.astype(np.float32))
  numeric = reference.numeric_grad(lambda a: _contrastive_reference(a, ids, 0.3, decoupled), z)
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)


def test_dcl_drops_the_positive_from_the_denominator():
  rng = np.random.default_rng(3)
  z1, z2 = rng.normal(size=(2, 8, 4))
  gap = losses.nt_xent(z1, z2, 0.5) - losses.nt_xent(z1, z2, 0.5, decoupled=True)
  assert gap > 0  # log(Σ_{k≠i}) > log(Σ_{k∉{i,p}}).


def _info_nce_reference(q, k, t, queue):
  q, k = reference.normalize(q.astype(np.float64)), reference.normalize(k.astype(np.float64))
  total = 0.0
  for i in range(len(q)):
    negatives = [reference.normalize(u) for u in queue] if queue is not None else [
        k[j] for j in range(len(k)) if j != i]
    den = np.exp(q[i] @ k[i] / t) + sum(np.exp(q[i] @ u / t) for u in negatives)
    total += -np.log(np.exp(q[i] @ k[i] / t) / den)
  return total / len(q)


@pytest.mark.parametrize("with_queue", [False, True])
def test_info_nce_matches_reference_and_stops_key_gradients(with_queue):
  rng = np.random.default_rng(4)
  q, k, queue = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), rng.normal(size=(7, 4))
  queue = queue if with_queue else None
  np.testing.assert_allclose(losses.info_nce(q, k, 0.2, queue),
                             _info_nce_reference(q, k, 0.2, queue), rtol=1e-5)
  gq, gk = jax.grad(lambda a, b: losses.info_nce(a, b, 0.2, queue), (0, 1))(
      q.astype(np.float32), k.astype(np.float32))
  np.testing.assert_allclose(gq, reference.numeric_grad(lambda a: _info_nce_reference(a, k, 0.2, queue), q),
                             rtol=1e-3, atol=1e-4)
  assert not np.any(gk)


def test_dcl_with_a_single_class_batch_is_finite():
  z = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
  ids = np.zeros(6, np.int32)
  loss, grad = jax.value_and_grad(lambda a: losses.contrastive(a, ids, 0.1, True))(z)
  assert np.isfinite(loss) and np.isfinite(grad).all()
