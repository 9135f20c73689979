"""Method mechanics: MoCo queue and EMA, SwAV prototypes and multi-crop, poly-view, recipes."""
import glob
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_contrast import losses
from big_contrast import methods
from big_contrast import optim
from big_contrast import train
from big_contrast import run as run_lib
from big_contrast.methods import moco
from conftest import assert_fraction_of_test_split
from conftest import tiny_config
from input_pipeline import digits

SCHEDULE = methods.Schedule(total_steps=10, steps_per_epoch=2)
RECIPES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), "..", "configs", "*_digits.py")))


def _batch(n=16, size=8):
  images, labels = digits.load("train", size)
  return {"image": jnp.asarray(images[:n]), "label": jnp.asarray(labels[:n])}


def _init(config):
  method = run_lib.build_method(config, SCHEDULE)
  params, state = method.init(jax.random.PRNGKey(0), _batch()["image"][:2])
  return method, params, state


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_digits_recipe_trains_a_few_steps(recipe, tmp_path):
  # lit_digits loads simclr_digits' checkpoint; tests/image_text_method_test.py covers that.
  results = train.train_and_evaluate(
      tiny_config(recipe, total_steps=2, mesh=[("data", 2)], **{"init_from.workdir": ""}),
      str(tmp_path))
  assert results["step"] == 2
  c = tiny_config(recipe)
  want = {"knn": {"knn_top1", "knn_top5"}, "linear_probe": {"linear_probe_top1"},
          "zero_shot": {"zero_shot_top1", "zero_shot_top5"},
          "retrieval": {f"{d}_r@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}}
  assert set(results["final"]) == {f"eval/{m}" for e in c.eval.evaluators for m in want[e]}
  for name in ("knn_top1", "knn_top5", "linear_probe_top1", "zero_shot_top1"):
    if f"eval/{name}" in results["final"]:
      assert_fraction_of_test_split(results["final"][f"eval/{name}"])
  rows = [json.loads(line) for line in open(results["metrics_file"])]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_step_keeps_the_train_states_dtypes_with_bfloat16_parameters(recipe):
  # A state leaf that changes dtype (an EMA of bf16 weights promoted by a float32 momentum)
  # makes every checkpoint unrestorable: its layout no longer matches the run's.
  run = run_lib.setup(tiny_config(recipe, mesh=[("data", 1)], **{
      "init_from.workdir": "", "model.param_dtype": "bfloat16", "model.dtype": "bfloat16"}))
  new, _ = jax.eval_shape(run.train_step, run.abstract, run.batch_shapes())
  dtypes = lambda tree: jax.tree_util.tree_map_with_path(
      lambda p, x: (jax.tree_util.keystr(p), str(x.dtype)), tree)
  assert jax.tree.leaves(dtypes(new)) == jax.tree.leaves(dtypes(run.abstract))
  # A momentum encoder averages in float32: in bf16, (1 - m)(p - e) mostly rounds away.
  ema = run.abstract["state"].get("ema", {}).get("params", {})
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ema))


def test_enqueue_wraps_around():
  queue, ptr = jnp.zeros((8, 1)), jnp.int32(0)
  for i in range(3):
    queue, ptr = moco.enqueue(queue, ptr, jnp.full((4, 1), i + 1.0))
  np.testing.assert_array_equal(queue[:, 0], [3, 3, 3, 3, 2, 2, 2, 2])
  assert int(ptr) == 4


def test_momentum_schedule_and_ema_update():
  np.testing.assert_allclose(moco.momentum_at(0, 0.99, 1.0, 100), 0.99)
  np.testing.assert_allclose(moco.momentum_at(50, 0.99, 1.0, 100), 0.995)
  np.testing.assert_allclose(moco.momentum_at(100, 0.99, 1.0, 100), 1.0)
  method, params, state = _init(tiny_config("moco_v2_digits"))
  shifted = jax.tree.map(lambda p: p + 1.0, params)
  _, new_state = method.after_update(shifted, state, jnp.int32(0))
  m = 0.99
  for e, p, n in zip(jax.tree.leaves(state["ema"]["params"]), jax.tree.leaves(shifted),
                     jax.tree.leaves(new_state["ema"]["params"])):
    np.testing.assert_allclose(n, m * e + (1 - m) * p, rtol=1e-6, atol=1e-6)


def test_moco_queue_and_key_encoder_equal_on_8_devices_and_1(tmp_path):
  """The global batch's keys are enqueued in order; shuffle-BN groups do not depend on devices."""
  runs = {}
  for n in (1, 8):
    c = tiny_config("moco_v2_digits", total_steps=3, mesh=[("data", n)],
                    **{"eval.evaluators": ()})
    c.moco.queue_size = 64
    c.moco.bn_groups = 2  # Groups of 8: BatchNorm over 2 examples is too ill-conditioned.
    runs[n] = train.train_and_evaluate(c, str(tmp_path / str(n)))["train_state"]["state"]
  assert int(runs[8]["queue_ptr"]) == 48
  np.testing.assert_allclose(runs[8]["queue"], runs[1]["queue"], rtol=1e-4, atol=1e-5)
  # The first 48 rows are keys (unit norm) of 3 steps, the rest still the initial noise.
  np.testing.assert_allclose(np.linalg.norm(runs[8]["queue"][:48], axis=1), 1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(runs[8]["ema"]), jax.tree.leaves(runs[1]["ema"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _resnet_bn_probe():
  """A tiny encoder whose output is BatchNorm-normalised input: it shows the BN statistics."""
  method, params, state = _init(tiny_config("moco_v2_digits"))
  return method, params, state


def test_shuffle_bn_groups_normalise_queries_in_order_and_keys_in_random_groups():
  method, params, state = _resnet_bn_probe()
  x = method.eval_view(_batch(32)["image"])
  forward = lambda x, perm=None: moco.grouped_forward(method.model, params, state["model"], x,
                                                      4, perm)[0][1]
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
  # Query side: the outputs of group 0 (examples 0-7) depend only on that group.
  base_q = forward(x)
  changed = x.at[20].set(x[30])
  close(forward(changed)[:8], base_q[:8])
  assert not np.allclose(forward(x.at[1].set(x[30]))[0], base_q[0], atol=1e-2)
  # Key side: groups of a permutation, outputs back in the input order; each example is
  # normalised exactly as if its permuted group ran alone.
  perm = jax.random.permutation(jax.random.PRNGKey(3), 32)
  keys = forward(x, perm)
  for g in range(4):
    members = perm[8 * g:8 * g + 8]
    (_, alone), _ = moco.grouped_forward(method.model, params, state["model"], x[members], 1)
    # BatchNorm over 8 examples amplifies float32 reduction order in low-variance channels
    # (measured up to 3e-3); a wrong group is off by 0.8 or more.
    np.testing.assert_allclose(keys[members], alone, rtol=1e-3, atol=1e-2)
    assert np.abs(base_q[members] - alone).max() > 0.1
  # So a query and its key see different batch statistics (different groups).
  assert not np.allclose(keys, base_q, atol=1e-2)


def test_moco_v2_loss_shuffles_keys_with_a_fresh_permutation_every_step():
  method, params, state = _resnet_bn_probe()
  assert method.groups == 8
  loss = jax.jit(lambda rng: method.loss(params, state, _batch(), rng, jnp.int32(0)))
  # Same views, different shuffles: the keys, hence the queue rows written, differ.
  rng = jax.random.PRNGKey(1)
  _, (s1, _) = loss(rng)
  grouped_off = tiny_config("moco_v2_digits", **{"moco.bn_groups": 1})
  m1 = run_lib.build_method(grouped_off, SCHEDULE)
  _, (s0, _) = jax.jit(m1.loss)(params, state, _batch(), rng, jnp.int32(0))
  assert not np.allclose(s1["queue"][:16], s0["queue"][:16], atol=1e-4)


def test_moco_v3_loss_is_two_tau_times_the_summed_directions():
  c = tiny_config("moco_v3_digits")
  method, params, state = _init(c)
  rng = jax.random.PRNGKey(1)
  got, _ = jax.jit(method.loss)(params, state, _batch(), rng, jnp.int32(0))
  (x1, x2), _ = method.views(jax.random.split(rng)[0], _batch())
  t = c.loss.temperature
  terms = []
  for xq, xk in ((x1, x2), (x2, x1)):
    (_, q), _ = moco.grouped_forward(method.model, params, state["model"], xq, 1)
    (_, k), _ = moco.grouped_forward(method.model, state["ema"]["params"],
                                     state["ema"]["model"], xk, 1, predict=False)
    terms.append(losses.info_nce(q, k, t))
  np.testing.assert_allclose(got, 2 * t * (terms[0] + terms[1]), rtol=1e-5)


def test_moco_rejects_bn_groups_that_do_not_divide_the_batch():
  with pytest.raises(ValueError, match="config.moco.bn_groups=5 must divide"):
    run_lib.build_method(tiny_config("moco_v2_digits", **{"moco.bn_groups": 5}), SCHEDULE)


def test_moco_rejects_a_queue_that_does_not_hold_whole_batches():
  with pytest.raises(ValueError, match="config.moco.queue_size=100 must be a multiple of the 16"):
    run_lib.build_method(tiny_config("moco_v2_digits", **{"moco.queue_size": 100}), SCHEDULE)


def test_multicrop_view_shapes():
  method, _, _ = _init(tiny_config("swav_digits"))
  large, small = method.views(jax.random.PRNGKey(0), _batch())
  assert [v.shape for v in large] == [(16, 8, 8, 3)] * 2
  assert [v.shape for v in small] == [(16, 4, 4, 3)] * 4


def test_swav_prototypes_are_normalised_and_frozen_in_the_first_epoch():
  method, params, state = _init(tiny_config("swav_digits"))
  grad = jax.jit(lambda step: jax.grad(lambda p: method.loss(
      p, state, _batch(), jax.random.PRNGKey(1), step)[0])(params))
  assert method.freeze_steps == 2
  assert not np.any(grad(jnp.int32(1))["prototypes"])
  assert np.any(grad(jnp.int32(1))["encoder"]["projector"]["out"]["kernel"])
  assert np.any(grad(jnp.int32(2))["prototypes"])
  scaled = {**params, "prototypes": params["prototypes"] * 3}
  new_params, _ = method.after_update(scaled, state, 0)
  np.testing.assert_allclose(np.linalg.norm(new_params["prototypes"], axis=0), 1, rtol=1e-6)


def test_swav_queue_fills_and_joins_sinkhorn_after_its_start():
  c = tiny_config("swav_digits", **{"swav.queue_size": 32, "swav.queue_start_epoch": 1.0})
  method, params, state = _init(c)
  jitted = jax.jit(lambda s, step: method.loss(params, s, _batch(), jax.random.PRNGKey(1), step))
  loss = lambda s, step: jitted(s, jnp.int32(step))
  _, (state1, _) = loss(state, 0)
  assert state1["queue"].shape == (2, 32, 8)
  assert np.all(np.linalg.norm(state1["queue"][:, :16], axis=-1) > 0.99)
  assert not np.any(state1["queue"][:, 16:])
  before, _ = loss(state1, 1)   # Step 1 < start (2 steps): the queue is ignored.
  after, _ = loss(state1, 2)
  no_queue, _ = loss(state, 2)
  np.testing.assert_allclose(before, loss(state, 1)[0], rtol=1e-6)
  assert not np.isclose(after, no_queue)


def test_swav_queue_waits_until_it_is_full_even_if_its_start_is_earlier():
  c = tiny_config("swav_digits", **{"swav.queue_size": 64, "swav.queue_start_epoch": 0.0})
  method, _, _ = _init(c)
  assert method.queue_start == 4   # 64 rows / 16 per step, not step 0.


def test_poly_view_with_two_views_is_simclr():
  c = tiny_config("poly_view_digits", num_views=2, batch_size=16)
  method, params, state = _init(c)
  pv, _ = method.loss(params, state, _batch(), jax.random.PRNGKey(3), 0)
  simclr = run_lib.build_method(tiny_config("simclr_digits"), SCHEDULE)
  sc, _ = simclr.loss(params, state, _batch(), jax.random.PRNGKey(3), 0)
  np.testing.assert_allclose(pv, sc, rtol=1e-5)


def test_supcon_uses_labels_as_positives():
  method, params, state = _init(tiny_config("supcon_digits"))
  z, _ = method.embed(params, state, method.inputs(_batch(), jax.random.PRNGKey(0)))
  z = jnp.swapaxes(z, 0, 1)
  labels = _batch()["label"]
  want = losses.contrastive(z.reshape(32, -1), jnp.tile(labels, 2), 0.1)
  got, _ = method.loss(params, state, _batch(), jax.random.PRNGKey(0), 0)
  np.testing.assert_allclose(got, want, rtol=1e-6)


ALL_RECIPES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), "..", "configs", "[a-z]*_*.py")))


# Image backbones of the paper-scale recipes: the parameter counts of the models they export to
# (torchvision resnet50 without fc: 25,557,032 - 2,049,000; timm vit_base_patch16_224 without
# head and learned positions (ours are sin-cos): 86,567,656 - 769,000 - 151,296; timm
# vit_base_patch16_siglip_224 without classifier).
RESNET50, VIT_B16_COS, VIT_B16_SIGLIP = 23_508_032, 85_647_360, 92_884_224
BACKBONE_PARAMS = {
    **{r: RESNET50 for r in ("simclr_imagenet", "dcl_imagenet", "supcon_imagenet",
                             "moco_v2_imagenet", "swav_imagenet", "poly_view_imagenet",
                             "nnclr_imagenet", "mv_infonce_imagenet", "mv_dhel_imagenet",
                             "poly_view_suffstats_imagenet")},
    "moco_v3_imagenet": VIT_B16_COS, "lit_b16": VIT_B16_COS, "siglip_b16": VIT_B16_SIGLIP}


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_every_recipe_builds_its_method_and_model(recipe):
  """Paper-scale recipes cannot run here; their method, optimizer and shapes are checked."""
  c = importlib.import_module(f"configs.{recipe}").get_config()
  if "text" in c and c.text.tokenizer.name in ("sentencepiece", "clip_bpe"):  # A user's file.
    c.text.tokenizer.name = "bytes"
  method = run_lib.build_method(c, methods.Schedule(total_steps=1000, steps_per_epoch=10))
  size = c.data.image_size
  params, state = jax.eval_shape(method.init, jax.random.PRNGKey(0),
                                 jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8))
  tx, _ = optim.make(c.optimizer, c.batch_size, 1000, 10, method.param_starts())
  jax.eval_shape(tx.init, params)
  tower = params.get("encoder", params)
  tower = tower["backbone"] if "backbone" in tower else tower["image"]
  count = sum(x.size for x in jax.tree.leaves(tower))
  assert count == BACKBONE_PARAMS.get(recipe, count) > 0, (recipe, count)


def test_per_view_augmentation_overrides():
  c = tiny_config("simclr_digits")
  c.augment_views = ({"solarize_prob": 1.0, "solarize_threshold": 0.0},)
  method = run_lib.build_method(c, SCHEDULE)
  assert method.view_augment(0).solarize_prob == 1.0
  assert method.view_augment(1).solarize_prob == c.augment.solarize_prob == 0.0
  same = c.copy_and_resolve_references()
  same.augment_views = ()
  key, images = jax.random.PRNGKey(0), _batch()["image"]
  (v0, v1), _ = method.views(key, {"image": images})
  (w0, w1), _ = run_lib.build_method(same, SCHEDULE).views(key, {"image": images})
  np.testing.assert_allclose(v1, w1)                # View 1 is untouched.
  unnormalize = lambda v: v * 0.5 + 0.5             # Digits recipes normalise with 0.5 / 0.5.
  np.testing.assert_allclose(unnormalize(v0), 1 - unnormalize(w0), atol=1e-5)  # Solarized.
