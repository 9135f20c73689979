"""Two-tower models, image-text evaluators, the CLIP/SigLIP method, LiT locking and loading."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_contrast import evaluate
from big_contrast import initialize
from big_contrast import methods
from big_contrast import models
from big_contrast import optim
from big_contrast import sharding
from big_contrast import train
from conftest import tiny_config
from input_pipeline import pipeline
from input_pipeline import tokenizers

SCHEDULE = methods.Schedule(total_steps=10, steps_per_epoch=2)


# Text tower.

def _text(causal, pool="last"):
  return models.TextTransformer(vocab_size=50, width=16, depth=2, heads=2, context_length=12,
                                causal=causal, pool=pool)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pool", ["last", "gap", "map"])
def test_text_tower_ignores_padding(causal, pool):
  model = _text(causal, pool)
  short = jnp.array([[5, 6, 7, 1, 0, 0, 0, 0]])
  longer = jnp.array([[5, 6, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
  params = model.init(jax.random.PRNGKey(0), longer)
  np.testing.assert_allclose(model.apply(params, short), model.apply(params, longer),
                             rtol=1e-5, atol=1e-6)


def test_causal_text_tower_last_token_sees_every_token_but_not_the_future():
  model = _text(causal=True)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  hidden = lambda t: model.apply(params, jnp.array([t]))
  a, b = hidden([5, 6, 7, 1, 0, 0]), hidden([9, 6, 7, 1, 0, 0])
  assert not np.allclose(a, b)   # the pooled EOS token attends to the first token


def test_text_tower_rejects_too_many_tokens():
  model = _text(causal=True)
  with pytest.raises(ValueError, match="exceed the text tower's context_length 12"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 13), jnp.int32))


def test_vit_map_pooling():
  model = models.vit("Ti/4", width=16, depth=1, heads=2, pool="map")
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)))
  assert "map_head" in params["params"]
  assert model.apply(params, jnp.ones((2, 8, 8, 3))).shape == (2, 16)


def test_two_tower_temperature_and_bias_init():
  c = tiny_config("siglip_digits")
  clip_method = methods.get(tiny_config("clip_digits"), SCHEDULE)
  siglip_method = methods.get(c, SCHEDULE)
  images = jnp.zeros((1, 8, 8, 3), jnp.uint8)
  p_clip, _ = clip_method.init(jax.random.PRNGKey(0), images)
  p_sig, _ = siglip_method.init(jax.random.PRNGKey(0), images)
  np.testing.assert_allclose(np.exp(p_clip["t"]), 1 / 0.07, rtol=1e-6)
  assert "b" not in p_clip
  np.testing.assert_allclose(np.exp(p_sig["t"]), 10.0, rtol=1e-6)
  np.testing.assert_allclose(p_sig["b"], -10.0)


# Evaluators on hand-made embeddings.

def test_zero_shot_on_known_embeddings():
  classes = np.eye(3)                                   # class c points along axis c
  prompts = np.stack([classes + 0.1, classes * 2])      # two templates; normalised away
  classifier = evaluate.zero_shot_classifier(prompts.transpose(1, 0, 2))
  images = np.array([[1, 0.2, 0], [0, 0, 3], [0.1, 1, 0], [1, 0, 0]])
  labels = np.array([0, 2, 1, 1])
  acc = evaluate.zero_shot_accuracy(images, classifier, labels, ks=(1, 2))
  np.testing.assert_allclose(acc[1], 0.75)   # the last image is a 0, labelled 1
  np.testing.assert_allclose(acc[2], 1.0)


def test_retrieval_recall_on_known_embeddings():
  images = np.eye(4)[:3]                     # 3 images along axes 0, 1, 2
  texts = np.array([[1, 0, 0, 0],            # caption of image 0
                    [0, 0.3, 1, 0],          # caption of image 1, but points at image 2
                    [0, 0.9, 0.1, 0],        # caption of image 1
                    [0, 0, 1, 0.5]])         # caption of image 2
  r = evaluate.retrieval_recall(images, texts, np.array([0, 1, 1, 2]), ks=(1, 2))
  # image -> text: 0 finds text 0; 1 finds text 2 (its own); 2's best is text 1 (image 1's).
  np.testing.assert_allclose([r["i2t_r@1"], r["i2t_r@2"]], [2 / 3, 1])
  # text -> image: texts 0, 2, 3 right at 1; text 1 ranks image 2 first, image 1 second.
  np.testing.assert_allclose([r["t2i_r@1"], r["t2i_r@2"]], [3 / 4, 1])


def test_retrieval_ties_count_against_the_model():
  same = np.ones((5, 4))
  r = evaluate.retrieval_recall(same, same, np.arange(5), ks=(1,))
  assert r["i2t_r@1"] == 0 and r["t2i_r@1"] == 0


# Data: captions are tokenized on the host, one random caption per example per epoch.

def test_train_batches_carry_tokens_of_a_caption_that_changes_across_epochs():
  c = tiny_config("clip_digits", **{"text.tokenizer.length": 64})
  tok = tokenizers.get_tokenizer(c.text.tokenizer)
  train_src, _, _ = pipeline.get_sources(c.data)
  batches = pipeline.train_batches(train_src, 16, seed=0, tokenizer=tok)
  b0 = batches[0]
  assert b0["text"].shape == (16, 64) and b0["text"].dtype == np.int32
  assert "captions" not in b0
  np.testing.assert_array_equal(batches[0]["text"], b0["text"])   # deterministic, resumable
  # Captions are drawn from each image's templates: many distinct texts over a few batches.
  texts = {tok.decode(t) for s in range(0, 400, 16) for t in batches[s]["text"]}
  assert len(texts) > 200


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
  assert 0 <= res["final"]["eval/zero_shot_top1"] <= 1
  assert "eval/t2i_r@10" in res["final"]


def test_siglip_method_ring_equals_full_in_loss_and_gradient_on_8_devices():
  grads = {}
  for impl in ("ring", "full"):
    c = tiny_config("siglip_digits", mesh=[("data", 8)], **{"loss.impl": impl})
    method = methods.get(c, SCHEDULE)
    params, state = method.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))
    mesh = sharding.make_mesh(c.mesh)
    tok = method.tokenizer
    images, _ = pipeline.digits.load("train", 8)
    batch = sharding.global_batch(
        {"image": images[:16], "text": tok.batch([f"digit {i}" for i in range(16)])}, mesh)
    fn = jax.jit(jax.value_and_grad(
        lambda p: method.loss(p, state, batch, jax.random.PRNGKey(1), 0)[0]))
    grads[impl] = fn(params)
  np.testing.assert_allclose(grads["ring"][0], grads["full"][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads["ring"][1]), jax.tree.leaves(grads["full"][1])):
    assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b)) + 1e-7


def test_ring_needs_siglip():
  with pytest.raises(ValueError, match="config.loss.impl='ring'"):
    methods.get(tiny_config("clip_digits", **{"loss.impl": "ring"}), SCHEDULE)


def test_image_text_evaluators_need_an_image_text_method(tmp_path):
  c = tiny_config("simclr_digits", **{"eval.evaluators": ("knn", "zero_shot")})
  with pytest.raises(ValueError, match="need an image-text method"):
    train.train_and_evaluate(c, str(tmp_path))
  c = tiny_config("simclr_digits", **{"eval.evaluators": ("knn", "recall")})
  with pytest.raises(ValueError, match="unknown \\['recall'\\]"):
    train.train_and_evaluate(c, str(tmp_path))


# LiT: a tower locked and loaded from a checkpoint of this project.

@pytest.fixture(name="simclr_run", scope="module")
def simclr_run_fixture(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("simclr")
  c = tiny_config("simclr_digits", total_steps=2)
  c.model.update(width=4)
  state = train.train_and_evaluate(c, str(workdir))["train_state"]
  return str(workdir), state


def _lit_config(workdir, **kw):
  c = tiny_config("lit_digits", total_steps=3, mesh=[("data", 2)], **kw)
  c.model.image.width = 4
  c.init_from.workdir = workdir
  return c


def test_lit_loads_the_image_tower_and_keeps_it_bit_identical(simclr_run, tmp_path):
  workdir, simclr = simclr_run
  res = train.train_and_evaluate(_lit_config(workdir), str(tmp_path))
  ts = res["train_state"]
  # Loaded: the image tower is SimCLR's backbone, params and BatchNorm statistics, bit for bit
  # after 3 training steps.
  for got, want in zip(jax.tree.leaves(ts["params"]["image"]),
                       jax.tree.leaves(simclr["params"]["backbone"])):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(ts["state"]["model"]["batch_stats"]["image"]),
                       jax.tree.leaves(simclr["state"]["model"]["batch_stats"]["backbone"])):
    np.testing.assert_array_equal(got, want)
  # No optimizer state for the locked tower: every moment has the size of the trained params.
  trained = sum(x.size for k, v in ts["params"].items() if k != "image"
                for x in jax.tree.leaves(v))
  moments = [x.size for x in jax.tree.leaves(ts["opt_state"])
             if jnp.issubdtype(x.dtype, jnp.floating)]
  assert sum(moments) == 2 * trained   # Adam's mu and nu
  paths = [sharding.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(ts["opt_state"])]
  assert not any("/image/" in p for p in paths)
  # The rest trained.
  fresh = _lit_config("")
  method = methods.get(fresh, SCHEDULE)
  assert method.locked == {"image": True, "text": False}


def test_lit_locked_tower_gets_no_gradient():
  method = methods.get(_lit_config(""), SCHEDULE)
  params, state = method.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))
  batch = {"image": jnp.zeros((4, 8, 8, 3), jnp.uint8), "text": jnp.ones((4, 16), jnp.int32)}
  grads = jax.grad(lambda p: method.loss(optim.stop_frozen(p, (r"image/.*",)), state, batch,
                                         jax.random.PRNGKey(0), 0)[0])(params)
  assert not any(np.any(g) for g in jax.tree.leaves(grads["image"]))
  assert any(np.any(g) for g in jax.tree.leaves(grads["text"]))


def test_init_from_errors_are_clear_and_early(simclr_run, tmp_path):
  workdir, _ = simclr_run
  with pytest.raises(ValueError, match="has no checkpoints/ directory"):
    train.train_and_evaluate(_lit_config(str(tmp_path / "nowhere")), str(tmp_path / "a"))
  c = _lit_config(workdir)
  c.init_from.rules = ((r"params/image/(.*)", r"params/encoder/\1"),)
  with pytest.raises(ValueError, match="does not have"):
    train.train_and_evaluate(c, str(tmp_path / "b"))
  c.init_from.rules = ((r"params/imgae/(.*)", r"params/backbone/\1"),)
  with pytest.raises(ValueError, match="match no parameter"):
    train.train_and_evaluate(c, str(tmp_path / "c"))
  c = _lit_config(workdir)
  c.model.image.width = 8
  with pytest.raises(ValueError, match="has shape"):
    train.train_and_evaluate(c, str(tmp_path / "d"))
  # Nothing was written by the failed runs.
  assert not os.path.exists(tmp_path / "d" / "checkpoints" / "0")


def test_plan_maps_destination_paths_to_source_paths():
  cfg = {"rules": ((r"params/image/(.*)", r"params/backbone/\1"),)}

  class Cfg(dict):
    __getattr__ = dict.__getitem__
  abstract = {"params": {"image": {"conv": {"kernel": 1}}, "text": {"x": 1}}, "state": {}}
  assert initialize.plan(Cfg(cfg), abstract) == {
      "params/image/conv/kernel": "params/backbone/conv/kernel"}
