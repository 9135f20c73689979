"""Poly-view losses against plain-loop numpy references written from the equations."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

# The module itself, even if the package later exports a function of the same name.
poly_view = importlib.import_module("big_contrast.losses.poly_view")

OBJECTIVES = ("geometric", "arithmetic", "multicrop")




def _poly_view_reference(z, t, objective):
  """Explicit loops over anchors (i, α), positives β, and candidates (j, γ)."""
  z = reference.normalize(z)
  m, n, _ = z.shape
  f = lambda a, i, g, j: np.exp(z[a, i] @ z[g, j] / t)
  total = 0.0
  for i in range(n):
    for a in range(m):
      others = sum(f(a, i, g, j) for j in range(n) if j != i for g in range(m))
      terms = []
      for b in range(m):
        if b == a:
          continue
        if objective == "multicrop":  # every view but the anchor itself
          denom = sum(f(a, i, g, j) for j in range(n) for g in range(m) if (j, g) != (i, a))
        else:  # the pair's own positive and the views of the other samples
          denom = f(a, i, b, i) + others
        terms.append(f(a, i, b, i) / denom)
      if objective == "arithmetic":
        total += -np.log(np.mean(terms))
      else:
        total += -np.mean(np.log(terms))
  return total / (n * m)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("m,t", [(3, 0.5), (4, 0.1)])
def test_matches_reference_value(objective, m, t):
  z = np.random.default_rng(m).normal(size=(m, 5, 7))
  got = poly_view.poly_view_loss(z, t, objective)
  np.testing.assert_allclose(got, _poly_view_reference(z, t, objective), rtol=2e-5)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_matches_reference_gradient(objective):
  z = np.random.default_rng(0).normal(size=(3, 4, 5))
  t = 0.5
  grad = jax.grad(lambda x: poly_view.poly_view_loss(x, t, objective))(z.astype(np.float32))
  numeric = reference.numeric_grad(lambda x: _poly_view_reference(x, t, objective), z)
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_two_views_is_exactly_nt_xent(objective, t):
  z1, z2 = np.random.default_rng(3).normal(size=(2, 6, 8))
  got = poly_view.poly_view_loss(np.stack([z1, z2]), t, objective)
  np.testing.assert_allclose(got, reference.nt_xent(z1, z2, t), rtol=1e-5)
  grad = jax.grad(lambda x: poly_view.poly_view_loss(x, t, objective))(
      np.stack([z1, z2]).astype(np.float32))
  numeric = reference.numeric_grad(lambda x: reference.nt_xent(x[0], x[1], t), np.stack([z1, z2]))
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


def test_ordering_multicrop_geometric_arithmetic():
  # Other positives in the multi-crop denominators only add terms; AM-GM for the other pair.
  z = np.random.default_rng(4).normal(size=(4, 8, 6))
  mc, geo, ari = (float(poly_view.poly_view_loss(z, 0.2, o))
                  for o in ("multicrop", "geometric", "arithmetic"))
  assert mc > geo > ari > 0


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_finite_for_identical_views(objective):
  x = np.random.default_rng(5).normal(size=(1, 8, 16)).astype(np.float32)
  z = np.repeat(x, 4, axis=0)
  fn = lambda a: poly_view.poly_view_loss(a, 0.05, objective)
  assert np.isfinite(float(fn(z)))
  assert np.isfinite(np.asarray(jax.grad(fn)(z))).all()
  assert np.isfinite(float(fn(np.zeros((3, 4, 8), np.float32))))  # fully collapsed


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_invariant_to_consistent_sample_permutation(objective):
  rng = np.random.default_rng(6)
  z = rng.normal(size=(3, 10, 6)).astype(np.float32)
  perm = rng.permutation(10)
  np.testing.assert_allclose(poly_view.poly_view_loss(z[:, perm], 0.1, objective),
                             poly_view.poly_view_loss(z, 0.1, objective), rtol=1e-5)


def test_jit_and_scale_invariance():
  z = np.random.default_rng(7).normal(size=(3, 6, 4)).astype(np.float32)
  loss = jax.jit(poly_view.poly_view_loss, static_argnames="objective")
  np.testing.assert_allclose(loss(z, 0.1, objective="arithmetic"),
                             poly_view.poly_view_loss(3.0 * z, 0.1, "arithmetic"), rtol=1e-5)


def test_errors():
  z = jnp.zeros((3, 4, 5))
  with pytest.raises(ValueError, match="config.loss.objective"):
    poly_view.poly_view_loss(z, objective="harmonic")
  with pytest.raises(ValueError, match="config.num_views"):
    poly_view.poly_view_loss(jnp.zeros((1, 4, 5)))
  with pytest.raises(ValueError, match=r"\[M, N, D\]"):
    poly_view.poly_view_loss(jnp.zeros((4, 5)))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_sharded_global_batch_matches_single_device(objective):
  devices = np.array(jax.devices())
  mesh = jax.sharding.Mesh(devices, ("data",))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data", None))
  z = np.random.default_rng(8).normal(size=(3, 2 * len(devices), 4)).astype(np.float32)
  fn = jax.jit(jax.value_and_grad(lambda x: poly_view.poly_view_loss(x, 0.2, objective)))
  loss_sharded, grad_sharded = fn(jax.device_put(z, spec))
  loss_single, grad_single = fn(jax.device_put(z, devices[0]))
  np.testing.assert_allclose(loss_sharded, loss_single, rtol=1e-5)
  np.testing.assert_allclose(grad_sharded, grad_single, rtol=1e-4, atol=1e-6)
