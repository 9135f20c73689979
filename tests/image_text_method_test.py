"""The image-text methods in the loop: SigLIP's ring against the full loss, t and b."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_contrast import methods
from big_contrast import run_config
from big_contrast import run as run_lib
from big_contrast import sharding
from big_contrast import train
from conftest import assert_fraction_of_test_split
from conftest import tiny_config
from input_pipeline import digits

SCHEDULE = methods.Schedule(total_steps=10, steps_per_epoch=2)


# The method in the loop.

def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_siglip_ring_trains_and_logs_t_and_b(tmp_path):
  c = tiny_config("siglip_digits", total_steps=3, mesh=[("data", 8)])
  assert c.loss.impl == "ring"
  res = train.train_and_evaluate(c, str(tmp_path))
  params = res["train_state"]["params"]
  rows = _read_jsonl(res["metrics_file"])
  assert any("t" in r and "b" in r for r in rows), "t and b are logged"
  # t and b moved: they receive gradients.
  assert not np.isclose(params["b"], -10.0)
  assert not np.isclose(np.exp(params["t"]), 10.0)
  assert_fraction_of_test_split(res["final"]["eval/zero_shot_top1"])
  for d in ("i2t", "t2i"):  # Recall over the 360 test pairs, growing with k.
    recall = [res["final"][f"eval/{d}_r@{k}"] for k in (1, 5, 10)]
    for r in recall:
      assert_fraction_of_test_split(r)
    assert recall == sorted(recall)


def test_siglip_method_ring_equals_full_in_loss_and_gradient_on_8_devices():
  grads = {}
  for impl in ("ring", "full"):
    c = tiny_config("siglip_digits", mesh=[("data", 8)], **{"loss.impl": impl})
    mesh = sharding.make_mesh(c.mesh)
    method = run_lib.build_method(c, SCHEDULE, mesh)
    params, state = method.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))
    tok = method.tokenizer
    images, _ = digits.load("train", 8)
    batch = sharding.global_batch(
        {"image": images[:16], "text": tok.batch([f"digit {i}" for i in range(16)])}, mesh)
    fn = jax.jit(jax.value_and_grad(
        lambda p: method.loss(p, state, batch, jax.random.PRNGKey(1), 0)[0]))
    grads[impl] = fn(params)
  np.testing.assert_allclose(grads["ring"][0], grads["full"][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads["ring"][1]), jax.tree.leaves(grads["full"][1])):
    assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b)) + 1e-7


def test_ring_needs_siglip_and_the_runs_mesh():
  with pytest.raises(ValueError, match=r"config.loss.impl is not a config key of this run "
                                       r"\(a typo\?\); it is a key of method siglip"):
    run_config.check(tiny_config("clip_digits", **{"loss.impl": "ring"}))
  method = run_lib.build_method(tiny_config("siglip_digits"), SCHEDULE)  # No mesh given.
  x = jnp.ones((8, 4))
  with pytest.raises(ValueError, match="lays the loss out over the run's mesh"):
    method.embedding_loss(method.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3),
                                                                       jnp.uint8))[0],
                          (x, x), {})




def test_clip_clips_its_logit_scale_at_max_scale_as_open_clip():
  method = run_lib.build_method(tiny_config("clip_digits"), SCHEDULE)
  params, state = method.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))
  for t, want in [(np.log(1000.0), 100.0), (-1.0, 1.0), (np.log(50.0), 50.0)]:
    new, _ = method.after_update({**params, "t": jnp.float32(t)}, state, 0)
    np.testing.assert_allclose(float(jnp.exp(new["t"])), want, rtol=1e-6)
  unclipped = run_lib.build_method(tiny_config("clip_digits", **{"loss.max_scale": 0}),
                                   SCHEDULE)
  new, _ = unclipped.after_update({**params, "t": jnp.float32(np.log(1000.0))}, state, 0)
  np.testing.assert_allclose(float(jnp.exp(new["t"])), 1000.0, rtol=1e-6)
  with pytest.raises(ValueError, match=r"config.model.temperature_init=1000: CLIP's logit "
                     r"scale starts within \[1, config.loss.max_scale=100\]"):
    run_lib.build_method(tiny_config("clip_digits", **{"model.temperature_init": 1000.0}),
                         SCHEDULE)
