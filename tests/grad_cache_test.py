"""GradCache: the full-batch contrastive gradient in micro-batches, with less memory."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_contrast import grad_cache
from big_contrast import methods
from big_contrast import sharding
from big_contrast import train
from big_contrast import run as run_lib
from conftest import tiny_config

SCHEDULE = methods.Schedule(total_steps=10, steps_per_epoch=1)
# A ViT SimCLR without BatchNorm anywhere: its gradient must equal the full batch's. Width
# 16: a width-4 ViT is so sharp (gradients ~2000 on the class token) that float rounding of
# the compiler's own choices shows at 3e-4.
VIT_SIMCLR = {"model.name": "vit", "model.variant": "Ti/4", "model.heads": 2,
              "model.head_bn": False, "model.width": 16}


def _setup(recipe, mesh, batch_size=32, **overrides):
  c = tiny_config(recipe, mesh=mesh, batch_size=batch_size, **overrides)
  mesh = sharding.make_mesh(c.mesh)
  method = run_lib.build_method(c, SCHEDULE, mesh)
  rs = np.random.RandomState(0)
  images = rs.randint(0, 256, (batch_size, 8, 8, 3)).astype(np.uint8)
  params, state = method.init(jax.random.PRNGKey(0), images[:1])
  batch = {"image": images, "label": np.arange(batch_size, dtype=np.int32) % 10}
  if method.tokenizer is not None:
    batch["text"] = rs.randint(1, 200, (batch_size, method.tokenizer.length)).astype(np.int32)
  return method, mesh, params, state, jax.device_put(batch, sharding.batch_sharding(mesh))


@pytest.mark.parametrize("recipe, mesh, overrides", [
    ("clip_digits", [("data", 1)], {}),
    ("siglip_digits", [("data", 2), ("fsdp", 4)], {"loss.impl": "ring"}),
    ("simclr_digits", [("data", 8)], VIT_SIMCLR),
    ("supcon_digits", [("data", 4)], VIT_SIMCLR),
])
def test_gradients_equal_the_full_batch_step(recipe, mesh, overrides):
  method, mesh, params, state, batch = _setup(recipe, mesh, **overrides)
  rng = jax.random.PRNGKey(1)
  (want_loss, (_, want_metrics)), want = jax.jit(
      lambda p: jax.value_and_grad(method.loss, has_aux=True)(p, state, batch, rng, 0))(params)
  (loss, (_, metrics)), got = jax.jit(
      lambda p: grad_cache.value_and_grad(method, p, state, batch, rng, 4, mesh))(params)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert metrics.keys() == want_metrics.keys()
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want))
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale, err_msg=str(path))
  # The temperature (a parameter of the loss, not of the towers) gets its gradient too.
  if recipe.endswith("clip_digits"):
    assert abs(float(got["t"])) > 1e-6


def test_micro_batches_do_not_see_fewer_negatives():
  """Plain accumulation (mean of micro-batch losses) is a different, smaller-batch objective."""
  method, mesh, params, state, batch = _setup("clip_digits", [("data", 1)])
  rng = jax.random.PRNGKey(1)
  loss = jax.jit(lambda b: method.loss(params, state, b, rng, 0)[0])
  full = loss(batch)
  (cached, _), _ = jax.jit(lambda b: grad_cache.value_and_grad(method, params, state, b, rng,
                                                               4, mesh))(batch)
  halves = [loss(jax.tree.map(lambda x: x[i::2], batch)) for i in range(2)]
  np.testing.assert_allclose(cached, full, rtol=1e-5)
  assert abs(float(np.mean(halves)) - float(full)) > 0.1


def test_batchnorm_is_per_micro_batch_and_running_means_are_averaged():
  """Ghost BatchNorm per micro-batch; the running averages get the mean of the K updates.

  The stem's BatchNorm sees the raw convolution, so the mean of its micro-batch means
  is exactly the full batch's; deeper layers see other (ghost-normalised) inputs.
  """
  method, mesh, params, state, batch = _setup("simclr_digits", [("data", 8)])
  rng = jax.random.PRNGKey(1)
  _, (want, _) = jax.jit(lambda: method.loss(params, state, batch, rng, 0))()
  (loss, (got, _)), grads = jax.jit(
      lambda: grad_cache.value_and_grad(method, params, state, batch, rng, 2, mesh))()
  assert np.isfinite(loss) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  stem = lambda s: s["model"]["batch_stats"]["backbone"]["stem_norm"]
  np.testing.assert_allclose(stem(got)["mean"], stem(want)["mean"], rtol=1e-4, atol=1e-6)
  # Deeper layers normalise with micro-batch statistics: close to, but not, SyncBN's.
  deep = lambda s: jnp.concatenate([x.ravel() for x in jax.tree.leaves(s["model"])])
  assert 0 < float(jnp.max(jnp.abs(deep(got) - deep(want)))) < 0.1


@pytest.mark.parametrize("k", [3, 5, 6, 7])
def test_a_state_no_micro_batch_changes_stays_bit_identical(k):
  """A locked tower's BatchNorm statistics come back unchanged from each micro-batch: their
  average must be that very value (a plain mean of K copies rounds it for these K)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1000,), jnp.float32)
  same = {"stats": jnp.stack([x] * k), "count": jnp.arange(k)}
  out = grad_cache._mean_state(same)
  np.testing.assert_array_equal(out["stats"], x)
  assert int(out["count"]) == k - 1
  differ = jnp.stack([x * (i + 1) for i in range(k)])
  np.testing.assert_allclose(grad_cache._mean_state(differ), x * (k + 1) / 2, rtol=1e-6)


def test_compiled_memory_shrinks_with_micro_batches():
  """The step's temporary memory (XLA's compiled memory analysis) is about 1/K."""
  temp = {}
  for k in (1, 4):
    c = tiny_config("clip_digits", mesh=[("data", 1)], batch_size=128, micro_batches=k)
    c.model.image.depth = c.model.text.depth = 2
    run = run_lib.setup(c, train_size=1280)
    step, abstract, method = run.train_step, run.abstract, run.method
    batch = {"image": jax.ShapeDtypeStruct((128, 8, 8, 3), np.uint8),
             "label": jax.ShapeDtypeStruct((128,), np.int32),
             "text": jax.ShapeDtypeStruct((128, method.tokenizer.length), np.int32)}
    temp[k] = step.lower(abstract, batch).compile().memory_analysis().temp_size_in_bytes
  assert temp[4] < 0.4 * temp[1], temp


def test_training_with_micro_batches_matches_the_full_batch_run(tmp_path):
  """Through the loop: 2 steps of ViT SimCLR with micro_batches=4 land where micro_batches=1 do."""
  # SGD: Adam's first steps (~lr·sign(g)) would blow float noise in gradients that are zero in
  # exact arithmetic (attention key biases) up to lr-sized differences. Width 16: a width-4
  # ViT is so sharp (gradient norm ~4000) that float noise of step 1 shows after step 2.
  runs = [train.train_and_evaluate(
      tiny_config(mesh=[("data", 4)], total_steps=2, micro_batches=k, **VIT_SIMCLR,
                  **{"optimizer.name": "sgd", "eval.evaluators": ()}),
      str(tmp_path / str(k)))["train_state"]["params"] for k in (1, 4)]
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(runs[0]), jax.tree.leaves(runs[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=str(path))


@pytest.mark.parametrize("recipe, overrides, message", [
    ("nnclr_digits", {"micro_batches": 2}, "GradCache needs a method whose loss is a function "
                                           "of per-example embeddings (clip, poly_view, siglip,"
                                           " simclr); 'nnclr' keeps"),
    ("simclr_digits", {"micro_batches": 4, "batch_size": 16},
     "must split into config.micro_batches=4"),
])
def test_bad_micro_batches_fail_before_compile(tmp_path, recipe, overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    train.train_and_evaluate(tiny_config(recipe, mesh=[("data", 8)], **overrides),
                             str(tmp_path))
