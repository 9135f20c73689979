"""Multi-view objectives against the authors' code (golden JSON) and exact properties.

tests/data/multi_view_golden.json holds inputs, values and input gradients computed
once, in float64, by the public code of Koromilas et al. (Multi-View-CL); its
"provenance" field says exactly how.
"""
import functools
import importlib
import json
import os

import jax
import numpy as np
import pytest
import reference

from big_contrast.losses.info_nce import nt_xent
from big_contrast.losses.objectives import MULTI_VIEW

# The module itself, even if the package later exports a function of the same name.
poly_view = importlib.import_module("big_contrast.losses.poly_view")

with open(os.path.join(os.path.dirname(__file__), "data", "multi_view_golden.json")) as f:
  GOLDEN = json.load(f)
CASES = {c["M"]: c for c in GOLDEN["cases"]}
NEW = ("mv_infonce", "mv_dhel", "sufficient_statistics")
CHECKED = NEW + ("geometric",)  # every objective whose authors' value and gradient are stored


@functools.cache
def _jit(fn):
  """Compiled once per shape: op-by-op dispatch would dominate these tiny tests."""
  return jax.jit(fn)


def _objective(name):
  return _jit(MULTI_VIEW.get(name))


@functools.cache
def _values_and_grads(temperature):
  """One jitted function giving every checked objective's value and gradient."""
  return jax.jit(lambda z: {name: jax.value_and_grad(MULTI_VIEW.get(name))(z, temperature)
                            for name in CHECKED})


@pytest.mark.parametrize("m", sorted(CASES))
def test_value_and_gradient_match_authors_code(m):
  case = CASES[m]
  got = _values_and_grads(case["temperature"])(np.asarray(case["z"], np.float32))
  for name in CHECKED:
    want = case["losses"][name]
    value, grad = got[name]
    np.testing.assert_allclose(value, want["value"], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(grad, np.asarray(want["grad"]), rtol=1e-4, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("m", sorted(CASES))
def test_public_arithmetic_pvc_is_a_different_aggregation(m):
  # The public form (see arithmetic_pvc): logsumexp over β of batch-mean losses, minus log N.
  case = CASES[m]
  z, n, t = np.asarray(case["z"], np.float32), case["N"], case["temperature"]
  log_p = np.asarray(_jit(poly_view.pairwise_log_probs)(z, t), np.float64)  # [α, β, i]
  batch_mean_loss = -log_p.mean(-1)  # [α, β]
  off = ~np.eye(m, dtype=bool)
  public = np.mean([np.logaddexp.reduce(batch_mean_loss[a][off[a]]) - np.log(n) for a in range(m)])
  np.testing.assert_allclose(public, case["losses"]["arithmetic_public"]["value"], rtol=1e-5)
  assert abs(float(_objective("arithmetic")(z, t)) - public) > 0.1


def test_registered_and_reachable_from_poly_view_loss():
  assert {"geometric", "arithmetic", "multicrop", *NEW} <= set(MULTI_VIEW.names())
  z = np.asarray(CASES[3]["z"], np.float32)
  loss = jax.jit(poly_view.poly_view_loss, static_argnames="objective")
  for name in NEW:
    np.testing.assert_allclose(loss(z, 0.2, objective=name), CASES[3]["losses"][name]["value"],
                               rtol=1e-5)


@pytest.mark.parametrize("name", NEW)
def test_invariant_to_view_order_sample_order_and_scale(name):
  rng = np.random.default_rng(1)
  z = np.asarray(CASES[4]["z"], np.float32)
  fn = _objective(name)
  base = fn(z, 0.3)
  scale = rng.uniform(0.1, 10.0, size=(4, 8, 1)).astype(np.float32)  # per embedding
  for other in (z[rng.permutation(4)], z[:, rng.permutation(8)], scale * z):
    np.testing.assert_allclose(fn(other, 0.3), base, rtol=1e-5)


def test_two_views_sufficient_statistics_is_exactly_nt_xent():
  z = np.random.default_rng(2).normal(size=(2, 6, 8)).astype(np.float32)
  got = _objective("sufficient_statistics")(z, 0.2)
  np.testing.assert_allclose(got, _jit(nt_xent)(z[0], z[1], 0.2), rtol=1e-6)
  np.testing.assert_allclose(got, reference.nt_xent(z[0], z[1], 0.2), rtol=1e-5)


def test_two_views_mv_infonce_bounds_nt_xent_with_equality_iff_symmetric_denominators():
  # The arithmetic mean (D_1 + D_2)/2 where NT-Xent has the geometric one: ≥, equal iff D_1 = D_2.
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(2, 6, 8))
  mv_infonce = _objective("mv_infonce")
  assert float(mv_infonce(np.stack([x, y]).astype(np.float32), 0.2)) > (
      reference.nt_xent(x, y, 0.2) + 1e-4)
  # A reflection H (H = Hᵀ, orthogonal) makes the two views' denominators equal.
  v = rng.normal(size=8)
  h = np.eye(8) - 2 * np.outer(v, v) / (v @ v)
  np.testing.assert_allclose(mv_infonce(np.stack([x, x @ h]).astype(np.float32), 0.2),
                             reference.nt_xent(x, x @ h, 0.2), rtol=1e-5)


def _log_alignment(z, t):
  """log Σ_{α<β} exp(x̃_{i,α}·x̃_{i,β}/τ) per sample, float64 loops."""
  z = reference.normalize(z)
  m = len(z)
  return np.log([sum(np.exp(z[a, i] @ z[b, i] / t) for a in range(m) for b in range(a + 1, m))
                 for i in range(z.shape[1])])


def test_two_views_mv_dhel_closed_form():
  z = np.random.default_rng(4).normal(size=(2, 6, 8))
  u = reference.normalize(z)
  log_unif = [[np.log(sum(np.exp(u[a, i] @ u[a, j] / 0.5) for j in range(6) if j != i))
               for i in range(6)] for a in range(2)]
  want = np.mean(np.sum(log_unif, 0) - _log_alignment(z, 0.5))
  np.testing.assert_allclose(_objective("mv_dhel")(z.astype(np.float32), 0.5), want, rtol=1e-5)


def test_mv_dhel_uniformity_ignores_how_views_are_paired():
  # Shuffling the samples of ONE view changes only the alignment term: the decoupling.
  rng = np.random.default_rng(5)
  z = np.asarray(CASES[3]["z"], np.float64)
  shuffled = z.copy()
  shuffled[1] = z[1, rng.permutation(8)]
  uniformity = lambda x: (float(_objective("mv_dhel")(x.astype(np.float32), 0.4))
                          + np.mean(_log_alignment(x, 0.4)))
  np.testing.assert_allclose(uniformity(shuffled), uniformity(z), rtol=1e-5)


@pytest.mark.parametrize("name", NEW)
def test_finite_where_products_of_sums_overflow_float32(name):
  # Near-collapsed samples at τ = 0.05: each within-view sum ~ (N-1) e^20, their product over
  # M = 8 views ~ 1e75 (the authors' code multiplies them); logs keep it finite.
  rng = np.random.default_rng(6)
  z = (1.0 + 1e-2 * rng.normal(size=(8, 8, 16))).astype(np.float32)
  value, grad = _jit(jax.value_and_grad(MULTI_VIEW.get(name)))(z, 0.05)
  assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
  assert np.isfinite(float(_objective(name)(np.zeros((3, 8, 16), np.float32), 0.1)))  # collapsed
