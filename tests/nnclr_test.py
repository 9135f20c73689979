"""NNCLR's nearest neighbour and loss against numpy references written from the paper
(arXiv:2104.14548, eq. 1-2 and the symmetric term of §3 "Implementation details")."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from big_contrast import losses
import reference


def _nn_reference(z, support):
  """Eq. 1 with a loop: the support row of largest cosine similarity."""
  z, s = reference.normalize(z), reference.normalize(support)
  return np.stack([np.asarray(support, np.float64)[np.argmax([zi @ sj for sj in s])]
                   for zi in z])


def _nnclr_reference(z1, z2, p1, p2, support, t, neighbours=None):
  """Mean over both view orders of the row (eq. 2) and column (symmetric) terms,
  with explicit loops; `neighbours` = (NN(z1), NN(z2)) can be given to hold them fixed."""
  n1, n2 = neighbours or (_nn_reference(z1, support), _nn_reference(z2, support))
  total = 0.0
  for nn, p in ((n1, p2), (n2, p1)):
    a, b = reference.normalize(nn), reference.normalize(p)
    n = len(a)
    for i in range(n):
      row = [np.exp(a[i] @ b[k] / t) for k in range(n)]
      col = [np.exp(a[k] @ b[i] / t) for k in range(n)]
      total += -np.log(row[i] / np.sum(row)) - np.log(col[i] / np.sum(col))
  return total / (4 * n)


def _inputs(n=6, d=5, q=12, seed=0):
  rng = np.random.default_rng(seed)
  z1, z2, p1, p2 = rng.normal(size=(4, n, d))
  support = reference.normalize(rng.normal(size=(q, d)))
  return z1, z2, p1, p2, support


def _f32(*xs):
  return [np.asarray(x, np.float32) for x in xs]


def test_nearest_neighbour_is_the_cosine_argmax_row():
  # Row 0 is long: the largest dot product with every query, but never the largest cosine.
  support = np.array([[10.0, 0.0], [0.6, 0.8], [0.0, -1.0], [-0.8, 0.6]], np.float32)
  z = np.array([[0.5, 0.9], [0.1, -2.0], [-3.0, 2.0], [0.6, 0.8]], np.float32)
  got = losses.nearest_neighbour(z, support)
  np.testing.assert_array_equal(got, support[[1, 2, 3, 1]])  # rows as stored
  np.testing.assert_allclose(got, _nn_reference(z, support), rtol=1e-6)
  # A query identical to a support row finds that row.
  z1, _, _, _, queue = _f32(*_inputs())
  np.testing.assert_array_equal(losses.nearest_neighbour(queue[[3, 7]], queue), queue[[3, 7]])
  np.testing.assert_allclose(losses.nearest_neighbour(z1, queue), _nn_reference(z1, queue),
                             rtol=1e-6)


def test_nearest_neighbour_has_no_gradient():
  z1, _, _, _, support = _f32(*_inputs())
  w = np.arange(z1.size, dtype=np.float32).reshape(z1.shape)
  f = lambda z, s: jnp.sum(losses.nearest_neighbour(z, s) * w)
  gz, gs = jax.grad(f, argnums=(0, 1))(z1, support)
  np.testing.assert_array_equal(gs, 0.0)
  np.testing.assert_array_equal(gz, 0.0)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nnclr_loss_matches_reference(t):
  args = _inputs()
  np.testing.assert_allclose(losses.nnclr_loss(*_f32(*args), t), _nnclr_reference(*args, t),
                             rtol=1e-5)
  np.testing.assert_allclose(jax.jit(losses.nnclr_loss)(*_f32(*args), t),
                             _nnclr_reference(*args, t), rtol=1e-5)


def test_nnclr_loss_gradient_reaches_only_the_predictions():
  z1, z2, p1, p2, support = args = _inputs(seed=1)
  t = 0.2
  grads = jax.grad(losses.nnclr_loss, argnums=(0, 1, 2, 3, 4))(*_f32(*args), t)
  fixed = (_nn_reference(z1, support), _nn_reference(z2, support))
  ref = lambda a, b: _nnclr_reference(z1, z2, a, b, support, t, fixed)
  np.testing.assert_allclose(grads[2], reference.numeric_grad(lambda a: ref(a, p2), p1),
                             rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(grads[3], reference.numeric_grad(lambda b: ref(p1, b), p2),
                             rtol=1e-3, atol=1e-5)
  for g in (grads[0], grads[1], grads[4]):  # z1, z2 and the support
    np.testing.assert_array_equal(g, 0.0)


def test_self_support_reduces_to_clip_and_moco_v3_infonce():
  # With the batch itself as the support every z is its own neighbour, and with p = z
  # NNCLR is CLIP's symmetric loss between the views = the mean of both InfoNCE orders.
  z1, z2, _, _, _ = _inputs(seed=2)
  z1, z2 = _f32(z1, z2)
  t = 0.2
  support = np.asarray(reference.normalize(np.concatenate([z1, z2])), np.float32)
  np.testing.assert_allclose(losses.nearest_neighbour(z1, support), support[:len(z1)],
                             rtol=1e-6)
  got = losses.nnclr_loss(z1, z2, z1, z2, support, t)
  np.testing.assert_allclose(got, losses.softmax_clip(z1, z2, 1 / t), rtol=1e-5)
  np.testing.assert_allclose(
      got, 0.5 * (losses.info_nce(z1, z2, t) + losses.info_nce(z2, z1, t)), rtol=1e-5)


@pytest.mark.parametrize("t", [0.1, 1.0])
def test_known_values_for_aligned_and_collapsed_inputs(t):
  n, d = 4, 6
  # Aligned and orthogonal: s_ii = 1/τ, s_ik = 0, so every term is log(1 + (N-1) e^{-1/τ}).
  e = np.eye(n, d, dtype=np.float32)
  np.testing.assert_allclose(losses.nnclr_loss(e, e, e, e, e, t),
                             np.log1p((n - 1) * np.exp(-1 / t)), rtol=1e-5, atol=1e-6)
  # Collapsed: every logit equal, the loss is log N whatever τ.
  c = np.ones((n, d), np.float32)
  np.testing.assert_allclose(losses.nnclr_loss(c, c, c, c, e, t), np.log(n), rtol=1e-6)


def test_nnclr_loss_on_8_devices_equals_1():
  args = _f32(*_inputs(n=8, seed=3))
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  batch, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  sharded = [jax.device_put(a, batch) for a in args[:4]] + [jax.device_put(args[4], rep)]
  np.testing.assert_allclose(jax.jit(losses.nnclr_loss)(*sharded, 0.1),
                             losses.nnclr_loss(*args, 0.1), rtol=1e-5)


# The method: predictor, queue, and its place in the loop.

def test_method_loss_is_nnclr_of_its_projections_and_fills_the_queue():
  from big_contrast import methods
  from big_contrast import numerics
  from big_contrast import run as run_lib
  from big_contrast.methods import base
  from conftest import tiny_config
  c = tiny_config("nnclr_digits", **{"nnclr.queue_size": 64})
  method = run_lib.build_method(c, methods.Schedule(total_steps=10, steps_per_epoch=2))
  images = np.random.RandomState(0).randint(0, 256, (16, 8, 8, 3)).astype(np.uint8)
  params, state = method.init(jax.random.PRNGKey(0), images[:1])
  assert state["queue"].shape == (64, 8) and int(state["queue_ptr"]) == 0
  np.testing.assert_allclose(jnp.linalg.norm(state["queue"], axis=1), 1.0, rtol=1e-5)
  rng = jax.random.PRNGKey(3)
  loss, (new_state, _) = jax.jit(method.loss)(params, state, {"image": images}, rng, 0)
  @jax.jit
  def by_hand(params, state, images):  # The same numbers from the encoder's parts.
    (x1, x2), _ = method.views(rng, {"image": images})
    variables = {"params": params, **state["model"]}
    h = method.model.apply(variables, jnp.concatenate([x1, x2]), train=True,
                           mutable=["batch_stats"], method=base.Encoder.encode)[0]
    z = method.model.apply(variables, h, train=True, mutable=["batch_stats"],
                           method=lambda m, h, train: m.head(h, train=train, predict=False))[0]
    p = method.model.apply(variables, z, train=True, mutable=["batch_stats"],
                           method=lambda m, z, train: m.predictor(z, train=train))[0]
    (z1, z2), (p1, p2) = jnp.split(z, 2), jnp.split(p, 2)
    return losses.nnclr_loss(z1, z2, p1, p2, state["queue"], c.loss.temperature), z1

  want, z1 = by_hand(params, state, images)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # The first view's normalised projections replace the oldest 16 rows.
  assert int(new_state["queue_ptr"]) == 16
  np.testing.assert_allclose(new_state["queue"][:16], numerics.l2_normalize(z1), atol=1e-5)
  np.testing.assert_array_equal(new_state["queue"][16:], state["queue"][16:])


def test_queue_size_must_be_a_multiple_of_the_batch(tmp_path):
  from big_contrast import train
  from conftest import tiny_config
  with pytest.raises(ValueError, match=r"config.nnclr.queue_size=100 must be a multiple of "
                                       r"config.batch_size=16"):
    train.train_and_evaluate(tiny_config("nnclr_digits", **{"nnclr.queue_size": 100}),
                             str(tmp_path))
