"""init_from: parts of a fresh model loaded from a checkpoint of this project (LiT)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_contrast import checkpoint
from big_contrast import init_from
from big_contrast import methods
from big_contrast import optim
from big_contrast import run as run_lib
from big_contrast import sharding
from big_contrast import train
from conftest import damaged_copy
from conftest import tiny_config

SCHEDULE = methods.Schedule(total_steps=10, steps_per_epoch=2)


# LiT: a tower locked and loaded from a checkpoint of this project.

@pytest.fixture(name="simclr_run", scope="module")
def simclr_run_fixture(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("simclr")
  # Saved on one device, loaded by LiT on two.
  c = tiny_config("simclr_digits", total_steps=2, mesh=[("data", 1)], **{"eval.evaluators": ()})
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
  method = run_lib.build_method(fresh, SCHEDULE)
  assert method.locked == {"image": True, "text": False}


def test_lit_locked_tower_gets_no_gradient():
  method = run_lib.build_method(_lit_config(""), SCHEDULE)
  params, state = method.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))
  batch = {"image": jnp.zeros((4, 8, 8, 3), jnp.uint8), "text": jnp.ones((4, 16), jnp.int32)}
  grads = jax.grad(lambda p: method.loss(optim.stop_frozen(p, (r"image/.*",)), state, batch,
                                         jax.random.PRNGKey(0), 0)[0])(params)
  assert not any(np.any(g) for g in jax.tree.leaves(grads["image"]))
  assert any(np.any(g) for g in jax.tree.leaves(grads["text"]))


def test_init_from_errors_are_clear_and_early(simclr_run, tmp_path):
  workdir, _ = simclr_run
  with pytest.raises(ValueError, match="nowhere' does not exist; set it to the workdir"):
    train.train_and_evaluate(_lit_config(str(tmp_path / "nowhere")), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="has no checkpoints/ directory"):
    train.train_and_evaluate(_lit_config(str(tmp_path)), str(tmp_path / "a2"))
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
  assert init_from.plan(Cfg(cfg), abstract) == {
      "params/image/conv/kernel": "params/backbone/conv/kernel"}


def test_a_source_checkpoint_that_differs_from_its_digest_is_refused(simclr_run, tmp_path):
  damaged = damaged_copy(simclr_run[0], str(tmp_path / "damaged"), 2)
  with pytest.raises(checkpoint.CorruptCheckpoint,
                     match=r"Checkpoint 2 .* 1 of \d+ arrays differ .* no earlier checkpoint"):
    train.train_and_evaluate(_lit_config(damaged), str(tmp_path / "lit"))
  assert not os.path.exists(tmp_path / "lit" / "checkpoints" / "0")


@pytest.mark.parametrize("ext", [".pt", ".safetensors"])
def test_torch_state_dicts_in_bfloat16_are_read_as_bfloat16(tmp_path, ext):
  torch = pytest.importorskip("torch")
  weights = {"fc.weight": torch.randn(3, 4).to(torch.bfloat16), "fc.bias": torch.zeros(3)}
  path = str(tmp_path / f"w{ext}")
  if ext == ".pt":
    torch.save(weights, path)
  else:
    from safetensors.torch import save_file
    save_file(weights, path)
  read = init_from.read_state_dict(path)
  assert read["fc.weight"].dtype.name == "bfloat16" and read["fc.bias"].dtype == np.float32
  np.testing.assert_array_equal(read["fc.weight"].astype(np.float32),
                                weights["fc.weight"].float().numpy())


def test_an_unreadable_source_is_not_called_corrupt(simclr_run, monkeypatch):
  reader = checkpoint.Checkpointer.reader(simclr_run[0])
  def denied(*_, **__):
    raise PermissionError(13, "Permission denied")
  monkeypatch.setattr(reader._manager, "restore", denied)  # pylint: disable=protected-access
  with pytest.raises(PermissionError):
    reader.restore_host(reader.all_steps()[-1])
