"""Partition rules (FSDP, tensor parallel), sharded training and cross-mesh checkpoints."""
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from big_contrast import sharding
from big_contrast import train
from conftest import tiny_config

# A ViT SimCLR whose widths (16, 64) divide by 8 devices. SGD: Adam's first steps
# (update ~ lr·sign(g)) would turn float noise in near-zero gradients into lr-sized
# differences between two layouts of one computation.
VIT = {"model.name": "vit", "model.variant": "Ti/4", "model.width": 16, "model.heads": 2,
       "optimizer.name": "sgd", "eval.evaluators": ()}
FSDP8 = {"mesh": [("fsdp", 8)], "sharding.rules": ("fsdp",), "sharding.min_size": 0}


def _specs(tree, mesh, rules, min_size=0):
  return {sharding.path_name(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(
      sharding.param_shardings(tree, mesh, rules, min_size))}


def _leaf(*shape):
  return jax.ShapeDtypeStruct(shape, np.float32)


def test_fsdp_shards_the_largest_divisible_dimension():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  tree = {"params": {"conv": _leaf(3, 3, 16, 64), "odd": _leaf(7, 5), "tie": _leaf(8, 8),
                     "bias": _leaf(64)},
          "opt_state": {"mu": {"conv": _leaf(3, 3, 16, 64)}}}
  specs = _specs(tree, mesh, ["fsdp"])
  assert specs["params/conv"] == P(None, None, None, "fsdp")
  assert specs["opt_state/mu/conv"] == P(None, None, None, "fsdp")  # moments like params
  assert specs["params/odd"] == P()          # nothing divides by 4: replicated
  assert specs["params/tie"] == P("fsdp")    # ties go to the first dimension
  assert _specs(tree, mesh, ["fsdp"], min_size=2**10)["params/bias"] == P()  # too small
  shardings = sharding.param_shardings(tree, mesh, ["fsdp"], 0)
  assert sharding.bytes_per_device(tree["params"]["conv"], shardings["params"]["conv"]) == (
      3 * 3 * 16 * 64 * 4 // 4)


def test_tensor_rules_split_heads_and_mlp_then_fsdp_takes_what_is_free():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  block = {"MultiHeadDotProductAttention_0": {
      "query": {"kernel": _leaf(16, 2, 8), "bias": _leaf(2, 8)},
      "out": {"kernel": _leaf(2, 8, 16), "bias": _leaf(16)}},
      "Dense_0": {"kernel": _leaf(16, 64), "bias": _leaf(64)},
      "Dense_1": {"kernel": _leaf(64, 16)}}
  specs = _specs({"params": {"image": {"block0": block}}}, mesh, ["transformer_tp", "fsdp"])
  b = "params/image/block0/"
  assert specs[b + "MultiHeadDotProductAttention_0/query/kernel"] == P("fsdp", "tensor")
  assert specs[b + "MultiHeadDotProductAttention_0/query/bias"] == P("tensor", "fsdp")
  assert specs[b + "MultiHeadDotProductAttention_0/out/kernel"] == P("tensor", None, "fsdp")
  assert specs[b + "Dense_0/kernel"] == P("fsdp", "tensor")
  assert specs[b + "Dense_0/bias"] == P("tensor")
  assert specs[b + "Dense_1/kernel"] == P("tensor", "fsdp")
  # Without the fsdp rule only the tensor axis is used.
  assert _specs({"params": {"image": {"block0": block}}}, mesh, ["transformer_tp"])[
      b + "Dense_1/kernel"] == P("tensor")


def test_scanned_blocks_shard_as_each_of_their_blocks():
  """model.scan_layers stacks blocks on a leading depth axis that no rule splits; rules,
  presets and min_size see one block."""
  from big_contrast import models
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  block = {"MultiHeadDotProductAttention_0": {"query": {"kernel": _leaf(16, 2, 8)}},
           "Dense_0": {"kernel": _leaf(16, 64), "bias": _leaf(64)},
           "LayerNorm_0": {"scale": _leaf(16)}}
  unrolled = {"params": {"image": {f"block{i}": block for i in range(4)}}}
  flat = {sharding.path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(unrolled)}
  stacked = {p: _leaf(*x.shape) for p, x in models.stack_layers(
      {p: np.zeros(x.shape, np.float32) for p, x in flat.items()}).items()}
  for rules, min_size in ((["transformer_tp", "fsdp"], 0), (["fsdp"], 32)):
    want = {p: s for p, s in _specs(flat, mesh, rules, min_size).items()
            if p.startswith("params/image/block0/")}
    got = _specs(stacked, mesh, rules, min_size)
    for path, spec in want.items():
      scanned = path.replace("/block0/", "/blocks/block/")
      assert got[scanned] == (P(None, *spec) if spec else P()), (path, rules)
  # The LayerNorm stack (4 x 16 = 64 elements) stays replicated under min_size 32 < 64, as
  # each block's 16-element scale does.
  assert _specs(stacked, mesh, ["fsdp"], 32)["params/image/blocks/block/LayerNorm_0/scale"] == P()


@pytest.mark.parametrize("rules, mesh, message", [
    (["fsdp"], [("data", 8)], "names mesh axis 'fsdp'"),
    (["transformer_tp"], [("data", 4), ("fsdp", 2)], "names mesh axis 'tensor'"),
    (["zero3"], [("data", 8)], "presets are"),
    ([("params/w", ("tensor",))], [("data", 2), ("tensor", 4)], "does not divide"),
])
def test_bad_rules_fail_with_the_fix(rules, mesh, message):
  with pytest.raises(ValueError, match=message):
    sharding.param_shardings({"params": {"w": _leaf(6, 4)}}, sharding.make_mesh(mesh), rules, 0)


def test_heads_that_tensor_parallelism_cannot_split_name_the_heads_key():
  attention = {"MultiHeadDotProductAttention_0": {"key": {"kernel": _leaf(64, 1, 64),
                                                          "bias": _leaf(1, 64)}}}
  with pytest.raises(ValueError, match=r"splits dimension [01] of params/text/block0/"
                     r".*/key/(kernel|bias) .* \(it counts attention heads: "
                     r"config.model.text.heads must be a multiple of 2\)\."):
    sharding.param_shardings({"params": {"text": {"block0": attention}}},
                             sharding.make_mesh([("data", 4), ("tensor", 2)]),
                             ["transformer_tp"], 0)


def test_bad_rules_fail_before_compile_in_the_loop(tmp_path):
  with pytest.raises(ValueError, match="config.sharding.rules"):
    train.train_and_evaluate(tiny_config(**{"sharding.rules": ("fsdp",)}), str(tmp_path))


def _assert_trees_close(a, b, **tol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=str(path), **tol)


@pytest.mark.parametrize("chunks", [{}, {"model.remat": "full", "model.block_chunks": 2}])
def test_fsdp_and_tensor_parallel_training_equals_one_device(tmp_path, chunks):
  """A two-tower ViT on data=2 x fsdp=2 x tensor=2 trains like one device, also with its blocks
  run over slices of each device's batch."""
  overrides = {"total_steps": 2, "sharding.rules": ("transformer_tp", "fsdp"),
               "sharding.min_size": 0, "optimizer.name": "sgd", "eval.evaluators": ()}
  sharded = train.train_and_evaluate(
      tiny_config("clip_digits", mesh=[("data", 2), ("fsdp", 2), ("tensor", 2)], **overrides,
                  **chunks), str(tmp_path / "sharded"))["train_state"]
  single = train.train_and_evaluate(
      tiny_config("clip_digits", mesh=[("data", 1), ("fsdp", 1), ("tensor", 1)], **overrides),
      str(tmp_path / "single"))["train_state"]
  _assert_trees_close(sharded["params"], single["params"], rtol=1e-4, atol=1e-5)
  query = sharded["params"]["text"]["block0"]["MultiHeadDotProductAttention_0"]["query"]
  assert query["kernel"].sharding.spec == P("fsdp", "tensor")
  moments = [x.sharding.spec for p, x in jax.tree_util.tree_leaves_with_path(
      sharded["opt_state"]) if sharding.path_name(p).endswith("text/block0/Dense_0/kernel")]
  assert moments and all(s == P("fsdp", "tensor") for s in moments)


def test_checkpoints_restore_across_mesh_shapes(tmp_path):
  """Saved with FSDP on 8 devices, restored on 1 bit-identical, trained on there; that
  1-device checkpoint restored under FSDP again; both continuations agree."""
  fsdp = lambda steps: tiny_config(total_steps=steps, **VIT, **FSDP8)
  single = lambda steps: tiny_config(total_steps=steps, mesh=[("data", 1)], **VIT)  # no rules
  run = lambda config, name: train.train_and_evaluate(config, str(tmp_path / name))

  saved = run(fsdp(2), "a")["train_state"]
  kernel = saved["params"]["backbone"]["block0"]["Dense_0"]["kernel"]
  assert kernel.sharding.spec == P(None, "fsdp") and kernel.sharding.num_devices == 8  # [16, 64]
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  restored = run(single(2), "b")["train_state"]  # Nothing left to train: restore only.
  _assert_trees_close(restored, saved, rtol=0, atol=0)
  assert restored["params"]["backbone"]["block0"]["Dense_0"]["kernel"].sharding.num_devices == 1

  on_one = run(single(4), "b")["train_state"]     # Steps 3-4 on 1 device ...
  on_eight = run(fsdp(4), "a")["train_state"]     # ... and under FSDP on 8.
  _assert_trees_close(on_one["params"], on_eight["params"], rtol=1e-4, atol=1e-5)
  # Momentum is a raw gradient sum: float reduction order shows more there.
  _assert_trees_close(on_one["opt_state"], on_eight["opt_state"], rtol=1e-2, atol=1e-4)

  # The 1-device step-4 checkpoint, restored under FSDP: bit-identical and sharded.
  back = run(fsdp(4), "b")["train_state"]
  _assert_trees_close(back, on_one, rtol=0, atol=0)
  assert back["params"]["backbone"]["block0"]["Dense_0"]["kernel"].sharding.spec == P(
      None, "fsdp")
