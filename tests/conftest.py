"""Every test process sees 8 CPU devices, so sharded and 1-device runs can be compared.

This must run before jax is imported anywhere.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib

import pytest


def tiny_config(recipe="simclr_digits", **overrides):
  """A recipe shrunk to test size (8x8 images, width-4 ResNet, 4 steps); dotted overrides."""
  from configs import common
  c = importlib.import_module(f"configs.{recipe}").get_config()
  c.batch_size = 16
  c.total_steps = 4
  c.log_every_steps = 1
  c.data.image_size = c.augment.crop_size = 8
  c.multicrop.crop_size = 4
  if c.model.name == "resnet":
    c.model.width = 4
  elif c.model.name == "two_tower":
    if c.model.image.name == "resnet":
      c.model.image.width = 4
    else:
      c.model.image.update(width=16, depth=1, heads=2)
    c.model.text.update(width=16, depth=1, heads=2)
    c.model.embed_dim = 8
    c.text.tokenizer.length = 16
  else:
    c.model.update(width=16, depth=1, heads=2)
  if c.model.name != "two_tower":
    c.model.head_hidden_dims, c.model.head_dim = (16,), 8
    c.model.predictor_hidden_dims = (16,)
  c.optimizer.warmup_epochs = 0.0
  c.checkpoint.every_steps = 2
  c.eval.update(at_start=False, batch_size=64, probe_epochs=2, probe_batch_size=64)
  common.override(c, overrides)
  return c


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
  return tiny_config
