"""Every test process sees 8 CPU devices, so sharded and 1-device runs can be compared.

This must run before jax is imported anywhere.
"""
import os

# The suite is compile-bound: tiny programs compiled without XLA's slow backend passes
# (optimisation level 0, no expensive LLVM passes) build ~2x faster and run the same maths.
# Processes of a multi-process test wait longer for each other's compiles.
TEST_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
              "--xla_cpu_collective_call_terminate_timeout_seconds=300")


def xla_flags(devices: int) -> str:
  return f"{TEST_FLAGS} --xla_force_host_platform_device_count={devices}"


os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib

import pytest


# Child processes that run the CLI compile the same programs again and again; one device's
# programs are kept in JAX's persistent cache. Not multi-device ones: with jax 0.10.2 on CPU,
# a multi-device program loaded from that cache deadlocked in its collectives.
CACHE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "big_contrast_tests_jax_cache")


def subprocess_env(devices: int, **extra) -> dict:
  """The environment of a test's child process: `devices` CPU devices, the test flags."""
  cache = {"JAX_COMPILATION_CACHE_DIR": CACHE_DIR} if devices == 1 else {}
  return dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu", **cache, **extra)


DIGITS_TEST_SIZE = 360  # input_pipeline/digits.py's fixed split.


def assert_fraction_of_test_split(value, n=DIGITS_TEST_SIZE):
  """An accuracy over the digits test split is k / 360 for an integer k in [0, 360]."""
  k = value * n
  assert 0 <= k <= n and abs(k - round(k)) < 1e-3, (value, k)


def tiny_config(recipe="simclr_digits", **overrides):
  """A recipe shrunk to test size (8x8 images, width-4 ResNet, 4 steps); dotted overrides."""
  from configs import common
  c = importlib.import_module(f"configs.{recipe}").get_config()
  c.batch_size = 16
  c.total_steps = 4
  c.log_every_steps = 1
  c.data.image_size = c.augment.crop_size = 8
  if "multicrop" in c:
    c.multicrop.crop_size = 4
  # ResNets get one block per stage (depth 10), ~25% less to compile than depth 18.
  if c.model.name == "resnet":
    c.model.update(width=4, depth=10)
  elif c.model.name == "two_tower":
    if c.model.image.name == "resnet":
      c.model.image.update(width=4, depth=10)
    else:
      c.model.image.update(width=16, depth=1, heads=2)
    c.model.text.update(width=16, depth=1, heads=2)
    c.model.embed_dim = 8
    c.text.tokenizer.length = 16
  else:
    c.model.update(width=16, depth=1, heads=2)
  if c.model.name != "two_tower":
    c.model.head_hidden_dims, c.model.head_dim = (16,), 8
    if "predictor_hidden_dims" in c.model:
      c.model.predictor_hidden_dims = (16,)
  c.optimizer.warmup_epochs = 0.0
  c.checkpoint.every_steps = 2
  c.eval.update(at_start=False, batch_size=64)
  c.eval.linear_probe.update(epochs=2, batch_size=64)
  common.override(c, overrides)
  return c


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
  return tiny_config


def damaged_copy(workdir, dest, step: int):
  """A copy of run `workdir` at `dest` whose checkpoint `step` differs from its digest, as if
  a bit of a kernel flipped on disk."""
  import json
  import shutil
  shutil.copytree(workdir, dest)
  from big_contrast import checkpoint
  path = os.path.join(dest, "checkpoints", str(step), checkpoint.DIGEST)
  with open(path) as f:
    sums = json.load(f)
  sums[next(k for k in sums if "kernel" in k)][1] += 1
  with open(path, "w") as f:
    json.dump(sums, f)
  return dest
