"""Backbones and heads: shapes, stems, dtypes and rematerialisation."""
import re

from flax import traverse_util
import jax
from jax import ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from big_contrast import methods
from big_contrast import models
from big_contrast import run as run_lib
from big_contrast.methods import base
from configs import common
from conftest import tiny_config


@pytest.mark.parametrize("depth, stem, size, feat", [
    (18, "cifar", 16, 4 * 8), (50, "imagenet", 32, 4 * 8 * 4)])
def test_resnet_feature_shape(depth, stem, size, feat):
  model = models.ResNet(depth=depth, width=4, stem=stem)
  x = jnp.zeros((2, size, size, 3))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  assert model.apply(variables, x, train=False).shape == (2, feat)
  assert set(variables) == {"params", "batch_stats"}


def test_resnet50_has_the_paper_parameter_count():
  model = models.ResNet(depth=50)
  shapes = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.PRNGKey(0),
                          jnp.zeros((1, 224, 224, 3)))
  n = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert n == 23_508_032  # torchvision resnet50 without its 2048x1000 fc layer.


def test_bfloat16_compute_keeps_float32_params():
  model = models.ResNet(depth=18, width=4, stem="cifar", dtype=jnp.bfloat16)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)), train=False)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


def test_mlp_head_last_bn():
  head = models.MLPHead((8,), 4, last_bn=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
  out, _ = head.apply(head.init(jax.random.PRNGKey(1), x), x, mutable=["batch_stats"])
  np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)


VIT = {"model.name": "vit", "model.variant": "Ti/4", "model.width": 16, "model.heads": 2,
       "model.depth": 1}


def _tiny(kind, **kw):
  """(module, input) of a 2-block ViT, TextTransformer or ResNet-18."""
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
  if kind in ("vit", "vit_map"):
    return models.vit("Ti/4", width=16, depth=2, heads=2, pool=kind[4:] or "cls", **kw), images
  if kind == "text":
    return (models.TextTransformer(vocab_size=16, width=16, depth=2, heads=2, context_length=8,
                                   **kw),
            jnp.array([[1, 2, 3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 10, 11, 12, 13]]))
  return models.ResNet(depth=18, width=4, stem="cifar", **kw), images


def _loss(model, x):
  """loss(params, other collections) -> (scalar, updated other collections), in training mode."""
  def loss(params, rest):
    y, new = model.apply({"params": params, **rest}, x, train=True, mutable=list(rest))
    return jnp.mean(jnp.sin(3 * y)), new
  return loss


def _split(variables):
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


@pytest.mark.parametrize("kind", ["vit", "vit_map", "text", "resnet"])
def test_remat_keeps_params_loss_and_gradients(kind):
  model, x = _tiny(kind)
  params, rest = _split(jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x))
  # Non-zero everywhere (ResNet blocks start as identity: their last BN scale is 0).
  params = jax.tree.map(lambda p: p + 0.1 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), params)
  structure = jax.tree.structure((params, rest))
  want = jax.jit(jax.value_and_grad(_loss(model, x), has_aux=True))(params, rest)
  for remat in ("full", "dots"):
    model, _ = _tiny(kind, remat=remat)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    assert jax.tree.structure(_split(shapes)) == structure, remat  # Checkpoint paths.
    got = jax.jit(jax.value_and_grad(_loss(model, x), has_aux=True))(params, rest)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=remat)


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def _nest(flat):
  return traverse_util.unflatten_dict(flat, sep="/")


@pytest.mark.parametrize("kind", ["vit", "text"])
@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_blocks_compute_what_unrolled_blocks_compute(kind, remat):
  model, x = _tiny(kind, remat=remat)
  params = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)["params"]
  params = jax.tree.map(lambda p: p + 0.1 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), params)
  scanned_model, _ = _tiny(kind, remat=remat, scan_layers=True)
  shapes = jax.eval_shape(lambda x: scanned_model.init(jax.random.PRNGKey(0), x, train=False),
                          x)["params"]
  stacked = models.stack_layers(_flat(params))
  # One stack of 2 blocks in place of block0 and block1, each leaf with a leading depth axis.
  assert sorted(stacked) == sorted(_flat(shapes)) and "blocks/block/Dense_0/kernel" in stacked
  assert stacked["blocks/block/Dense_0/kernel"].shape == (2, 16, 64)
  assert _flat(models.unstack_layers(stacked)).keys() == _flat(params).keys()
  for k, v in models.unstack_layers(stacked).items():
    np.testing.assert_array_equal(v, _flat(params)[k])
  loss = lambda m: jax.jit(jax.value_and_grad(lambda p: _loss(m, x)(p, {})[0]))
  want_value, want_grad = loss(model)(params)
  value, grad = loss(scanned_model)(_nest(stacked))
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for k, g in models.unstack_layers(_flat(grad)).items():
    np.testing.assert_allclose(g, _flat(want_grad)[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_the_optimizer_updates_scanned_blocks_as_unrolled_ones():
  """Weight decay skips biases and norm parameters by their rank in one block."""
  from big_contrast import optim
  from ml_collections import ConfigDict
  model, x = _tiny("vit")
  params = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)["params"]
  grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
  cfg = ConfigDict(dict(name="adamw", lr=0.1, weight_decay=0.5, warmup_epochs=0.0))
  tx, _ = optim.make(cfg, 256, 10, 0)
  want, _ = tx.update(grads, tx.init(params), params)
  stack = lambda tree: _nest(models.stack_layers(_flat(tree)))
  got, _ = tx.update(stack(grads), tx.init(stack(params)), stack(params))
  for k, v in models.unstack_layers(_flat(got)).items():
    np.testing.assert_allclose(v, _flat(want)[k], rtol=1e-6, atol=1e-7, err_msg=k)
  c = tiny_config("moco_v3_digits", **{"model.scan_layers": True, "optimizer.name": "lars"})
  with pytest.raises(ValueError, match="one trust ratio; set config.model.scan_layers=False"):
    run_lib.setup(c, train_size=64)


@pytest.mark.parametrize("overrides, message", [
    ({"model.scan_layers": True}, "config.model.scan_layers=True applies to transformer blocks"
                                  ".*set it to False"),
    ({"model.block_chunks": 2}, "config.model.block_chunks applies to transformer blocks.*set "
                                "it to 1"),
    ({**VIT, "model.block_chunks": 2}, "block_chunks=2 needs config.model.remat='full'"),
    # 32 over 8 devices and 2 micro-batches: 2 per device.
    ({**VIT, "mesh": [("data", 8)], "batch_size": 32, "micro_batches": 2,
      "model.block_chunks": 4, "model.remat": "full"},
     r"block_chunks=4 must divide each device's batch of 2 \(config.batch_size=32 over 8 "
     r"data-parallel shards and config.micro_batches=2\); use a divisor of 2"),
    # MoCo's towers run per shuffle-BN group: 16 / 8 = 2 examples.
    ({**VIT, "recipe": "moco_v3_digits", "batch_size": 16, "moco.bn_groups": 8,
      "model.block_chunks": 4, "model.remat": "full"},
     r"block_chunks=4 must divide each shuffle-BN group's 2 examples"),
])
def test_bad_transformer_block_settings_fail_at_setup(overrides, message):
  overrides = dict(overrides)
  with pytest.raises(ValueError, match=message):
    run_lib.setup(tiny_config(overrides.pop("recipe", "simclr_digits"), **overrides),
                  train_size=64)


def test_a_two_tower_with_a_resnet_image_tower_chunks_its_text_tower():
  """LiT with a locked ResNet: block_chunks is the text tower's (it is the one that trains)."""
  run = run_lib.setup(tiny_config("lit_digits", **{"model.block_chunks": 2,
                                                   "model.remat": "full"}), train_size=64)
  assert run.method.model.text.block_chunks == 2 and run.method.model.image.remat == "full"


@pytest.mark.parametrize("kind", ["vit", "vit_map", "text"])
def test_full_remat_keeps_one_bf16_sequence_per_block(kind, capsys):
  """What the backward pass keeps of a token sequence [N, L, width] under remat="full": each
  block's input, the final norm's input (the last block's output) and, for attention pooling,
  its input; all in the compute dtype, nothing in float32."""
  model, x = _tiny(kind, remat="full", dtype=jnp.bfloat16)
  params = model.init(jax.random.PRNGKey(0), x, train=False)
  capsys.readouterr()
  ad_checkpoint.print_saved_residuals(lambda p: model.apply(p, x, train=True).sum(), params)
  saved = re.findall(r"^(\w+)\[([\d,]*)\] output of", capsys.readouterr().out, re.M)
  sequences = [dtype for dtype, shape in saved
               if re.fullmatch(rf"{x.shape[0]},\d+,16", shape)]  # [N, L, width 16]
  assert len(sequences) == model.depth + 1 + (kind == "vit_map"), saved
  assert set(sequences) == {"bf16"}, saved


@pytest.mark.parametrize("kind", ["vit_map", "text"])
@pytest.mark.parametrize("remat, scan", [("full", False), ("dots", False), ("none", True)])
def test_block_chunks_compute_what_whole_batch_blocks_compute(kind, remat, scan):
  """Same parameter paths, loss and gradients; inference runs unchunked, at any batch size."""
  model, x = _tiny(kind, remat=remat, scan_layers=scan)
  params = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)["params"]
  params = jax.tree.map(lambda p: p + 0.1 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), params)
  chunked, _ = _tiny(kind, remat=remat, scan_layers=scan, block_chunks=2)
  loss = lambda m: jax.jit(jax.value_and_grad(lambda p: _loss(m, x)(p, {})[0]))
  (want_value, want_grad), (value, grad) = loss(model)(params), loss(chunked)(params)
  assert _flat(grad).keys() == _flat(want_grad).keys()  # The same parameter paths, all used.
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for k, g in _flat(grad).items():
    np.testing.assert_allclose(g, _flat(want_grad)[k], rtol=1e-4, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(chunked.apply({"params": params}, x[:1], train=False),
                             model.apply({"params": params}, x[:1], train=False), rtol=1e-5)
  with pytest.raises(ValueError, match="block_chunks=2 does not divide a batch of 1"):
    chunked.apply({"params": params}, x[:1], train=True)


def _grad_temp_bytes(model, x):
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  grad = jax.grad(lambda *v: _loss(model, x)(*v)[0])
  # XLA:CPU strips jax.checkpoint's CSE barriers (pass cse_barrier_expander) and then CSEs the
  # recomputation back into the forward pass; keep them, as the GPU and TPU compilers do.
  return jax.jit(grad).lower(*_split(variables)).compile(
      {"xla_disable_hlo_passes": "cse_barrier_expander"}).memory_analysis().temp_size_in_bytes


def test_remat_reduces_compiled_temp_memory():
  x = jnp.ones((32, 16, 16, 3))
  vit = {r: _grad_temp_bytes(models.vit("Ti/4", width=64, depth=4, heads=4, remat=r), x)
         for r in ("none", "full", "dots")}
  print("ViT grad temp bytes", vit)
  # Measured on CPU (jax 0.10.2): none 15.6 MB, full 5.5 MB, dots 7.6 MB.
  assert vit["full"] < 0.5 * vit["none"], vit
  assert vit["full"] < vit["dots"] < 0.7 * vit["none"], vit
  # ResNet blocks hold convs only: "dots" saving them keeps more than "full" (3.2 / 4.1 / 7.6 MB).
  resnet = {r: _grad_temp_bytes(models.ResNet(depth=18, width=8, stem="cifar", remat=r), x)
            for r in ("none", "full", "dots")}
  print("ResNet-18 grad temp bytes", resnet)
  assert resnet["full"] < resnet["dots"] < 0.7 * resnet["none"], resnet


def test_block_chunks_shrink_the_backward_working_set():
  """Under remat, a block is recomputed and differentiated one slice of the batch at a time."""
  x = jnp.ones((32, 16, 16, 3))
  temp = {k: _grad_temp_bytes(models.vit("Ti/4", width=64, depth=4, heads=4, remat="full",
                                         block_chunks=k), x) for k in (1, 4)}
  print("ViT grad temp bytes by block_chunks", temp)
  assert temp[4] < 0.6 * temp[1], temp


def _model_config(name, **kw):
  """A tiny `config.model` of a single-tower ("resnet", "vit") or the two-tower model."""
  if name == "two_tower":
    c = common.image_text_digits_config("siglip").model
    c.image.update(width=16, depth=1, heads=2)
    c.text.update(width=16, depth=1, heads=2)
  else:
    c = common.base_config("moco").model
    c.update(depth=18, width=4, stem="cifar", head_hidden_dims=(8,), head_dim=4,
             predictor_hidden_dims=(8,))
    if name == "vit":
      c.update(name="vit", variant="Ti/4", width=8, depth=2, heads=2)
  c.update(kw)
  return c


def _build(c):
  if c.name == "two_tower":
    return models.two_tower(c, vocab_size=16, pad_id=0, context_length=8, bias=True)
  return base.encoder(c, predictor=True)


@pytest.mark.parametrize("name", ["resnet", "vit", "two_tower"])
def test_bfloat16_params_everywhere_with_finite_loss_and_gradient(name):
  model = _build(_model_config(name, param_dtype="bfloat16", remat="full"))
  towers = (model.image, model.text) if name == "two_tower" else (model.backbone,)
  assert all(t.remat == "full" for t in towers)
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
  args = (images,) + ((jnp.array([[1, 2, 3, 0]] * 4),) if name == "two_tower" else ())
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), *args)
  params, rest = _split(variables)
  dtypes = {p: x.dtype for p, x in jax.tree_util.tree_leaves_with_path(params)}
  assert set(dtypes.values()) == {jnp.dtype(jnp.bfloat16)}, dtypes

  def loss(params):
    out, _ = model.apply({"params": params, **rest}, *args, mutable=list(rest))
    return sum(jnp.mean(jnp.sin(x.astype(jnp.float32))) for x in jax.tree.leaves(out))
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(value)
  assert all(jnp.all(jnp.isfinite(g.astype(jnp.float32))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", ["resnet", "vit", "two_tower"])
@pytest.mark.parametrize("key, value", [("remat", "sometimes"), ("dtype", "float64"),
                                        ("param_dtype", "fp16")])
def test_unknown_remat_or_dtype_names_the_config_key(name, key, value):
  with pytest.raises(ValueError, match=rf"config\.model\.{key}=.*{value}"):
    _build(_model_config(name, **{key: value}))


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


SCHEDULE = methods.Schedule(total_steps=10, steps_per_epoch=2)


def test_two_tower_temperature_and_bias_init():
  c = tiny_config("siglip_digits")
  clip_method = run_lib.build_method(tiny_config("clip_digits"), SCHEDULE)
  siglip_method = run_lib.build_method(c, SCHEDULE)
  images = jnp.zeros((1, 8, 8, 3), jnp.uint8)
  p_clip, _ = clip_method.init(jax.random.PRNGKey(0), images)
  p_sig, _ = siglip_method.init(jax.random.PRNGKey(0), images)
  np.testing.assert_allclose(np.exp(p_clip["t"]), 1 / 0.07, rtol=1e-6)
  assert "b" not in p_clip
  np.testing.assert_allclose(np.exp(p_sig["t"]), 10.0, rtol=1e-6)
  np.testing.assert_allclose(p_sig["b"], -10.0)
