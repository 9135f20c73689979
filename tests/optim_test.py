"""Optimizers by name, schedule shape, weight-decay mask and clipping."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from big_contrast import optim
from big_contrast import run_config
from conftest import tiny_config


def _cfg(**kw):
  return ml_collections.ConfigDict(dict(dict(name="adamw", lr=0.1, lr_batch_scale=0,
                                             weight_decay=0.5, momentum=0.9,
                                             grad_clip_norm=0.0), **kw))


def test_warmup_then_cosine_with_batch_scaling():
  lr = optim.schedule(_cfg(lr=0.3, lr_batch_scale=256), batch_size=512, total_steps=110,
                      warmup_steps=10)
  peak = 0.3 * 512 / 256
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110)],
                             [0, peak / 2, peak, peak / 2, 0], atol=1e-6)


def test_decay_mask_skips_biases_and_norm_parameters():
  params = {"conv": {"kernel": jnp.ones((3, 3, 1, 2))}, "norm": {"scale": jnp.ones(2)},
            "dense": {"bias": jnp.ones(2)}}
  assert optim.decay_mask(params) == {"conv": {"kernel": True}, "norm": {"scale": False},
                                      "dense": {"bias": False}}


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_each_optimizer_decays_kernels_but_not_biases(name):
  """With zero gradients only weight decay moves parameters: kernels shrink, biases stay."""
  tx, _ = optim.make(_cfg(name=name), batch_size=256, total_steps=10, warmup_steps=0)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  state = tx.init(params)
  zeros = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
  updates, _ = tx.update(zeros, state, params)
  new = optax.apply_updates(params, updates)
  assert float(new["kernel"][0, 0]) < 1.0
  np.testing.assert_array_equal(new["bias"], params["bias"])


def test_gradient_clipping():
  tx, _ = optim.make(_cfg(name="sgd", momentum=0.0, weight_decay=0.0, grad_clip_norm=1.0),
                     batch_size=256, total_steps=3, warmup_steps=0)
  params = {"w": jnp.zeros(4)}
  updates, _ = tx.update({"w": jnp.full(4, 100.0)}, tx.init(params), params)
  np.testing.assert_allclose(jnp.linalg.norm(updates["w"]), 0.1, rtol=1e-5)  # lr × 1.0


def test_unknown_optimizer_is_named():
  with pytest.raises(ValueError, match=r"config.optimizer.name='adam': must be one of .*adamw"):
    run_config.check(tiny_config(**{"optimizer.name": "adam"}))


def test_frozen_parameters_do_not_move_and_have_no_optimizer_state():
  tx, _ = optim.make(_cfg(name="adamw", frozen=(r"backbone/.*",)), batch_size=256,
                     total_steps=10, warmup_steps=0)
  params = {"backbone": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["backbone"]["kernel"], 1.0)
  assert float(new["head"]["kernel"][0, 0]) < 1.0
  n_state = sum(x.size for x in jax.tree.leaves(state))
  assert n_state < 2 * 4 + 4, n_state   # Adam moments for the head only (+ counters).


def test_lars_scales_kernels_by_trust_ratio_but_not_biases():
  """First LARS step: kernel update = lr·η·‖w‖/‖g‖·g, bias update = lr·g (no trust ratio)."""
  tx, _ = optim.make(_cfg(name="lars", weight_decay=0.0, trust_coefficient=0.001), batch_size=256,
                     total_steps=10, warmup_steps=0)
  params = {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full(2, 3.0)}
  grads = {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.full(2, 0.5)}
  updates, _ = tx.update(grads, tx.init(params), params)
  trust = 0.001 * 6.0 / 1.0    # η‖w‖/‖g‖ with ‖w‖ = 6, ‖g‖ = 1.
  np.testing.assert_allclose(updates["kernel"], -0.1 * trust * 0.5, rtol=1e-5)
  np.testing.assert_allclose(updates["bias"], -0.1 * 0.5, rtol=1e-5)


@pytest.mark.parametrize("clip", [0.0, 1e3])
def test_a_parameter_that_starts_late_trains_as_if_its_optimizer_started_then(clip):
  """SwAV's prototypes: no update and no optimizer-state change before their start step;
  then AdamW's first, bias-corrected step (|update| = lr at that step, not the ~3x a state
  that had counted the waiting steps gives), on the run's schedule."""
  cfg = _cfg(name="adamw", weight_decay=0.0, grad_clip_norm=clip)
  tx, lr = optim.make(cfg, batch_size=256, total_steps=50, warmup_steps=10,
                      starts=(("protos", 40),))
  params = {"protos": jnp.ones(3), "w": jnp.ones(3)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(41):
    grads = {"protos": jnp.full(3, 0.01 if t == 40 else 0.0), "w": jnp.full(3, 0.01)}
    updates, state = step(grads, state, params)
    if t < 40:
      np.testing.assert_array_equal(updates["protos"], 0.0)
  np.testing.assert_allclose(updates["protos"], -float(lr(40)), rtol=1e-4)
  assert np.all(updates["w"] < 0)  # Trained all along.
  labels = optim.param_labels(params, (), (("protos", 40),))
  assert labels == {"protos": "late_0", "w": "trained"}
