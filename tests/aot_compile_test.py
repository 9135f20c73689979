"""tools/aot_compile.py: the train step compiled for TPU topologies on this CPU host (libtpu)."""
import json
import os
import subprocess
import sys

import pytest

from configs import common
from conftest import subprocess_env, tiny_config
from tools import aot_compile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(head_width=2048):
  # FSDP over 2 of the 4 chips, data parallel over the other 2. The projection head's widths
  # are multiples of TPU tiles (8 x 128), so the arrays they size are stored without padding.
  return tiny_config(batch_size=32, mesh=(("data", 2), ("fsdp", 2)), **{
      "model.head_hidden_dims": (head_width,), "model.head_dim": 128, "eval.evaluators": (),
      "sharding.rules": ("fsdp",), "sharding.min_size": 2**10})


@pytest.fixture(scope="module")
def two_head_widths():
  return [aot_compile.compile_step(_config(width), "v5e:2x2") for width in (2048, 4096)]


def test_memory_figures_match_the_arguments_own_sizes(two_head_widths):
  for result in two_head_widths:
    m = result["per_chip"]
    assert result["chips"] == 4 and result["device_kind"] == "TPU v5 lite"
    assert result["mesh"] == {"data": 2, "fsdp": 2}
    # XLA's argument bytes: the shards' own bytes, plus tile padding of the small arrays.
    assert m["argument_bytes"] >= m["argument_bytes_unpadded"]
    # The train state is donated: its outputs reuse the arguments' buffers.
    assert 0.95 * m["output_bytes"] <= m["alias_bytes"] <= m["output_bytes"]
    assert m["total_bytes"] == (m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] +
                                m["temp_bytes"])
    assert result["fits"] and m["flops"] > 0 and m["bytes_accessed"] > 0
    roofline = result["roofline"]
    # No loop in a ResNet step: the two FLOP counts agree (convolutions counted alike).
    assert 0.75 <= m["matmul_flops"] / m["flops"] <= 1.25
    assert roofline["step_s"] == pytest.approx(max(max(m["flops"], m["matmul_flops"]) / 197e12,
                                                   m["bytes_accessed"] / 819e9))
    assert roofline["images_per_s"] == pytest.approx(32 / roofline["step_s"])
    assert not roofline["memory_term_lower_bound"]  # No loop in the step.
  narrow, wide = (r["per_chip"] for r in two_head_widths)
  # What the wider head adds per chip (its half of the kernels, BatchNorm and two Adam moments
  # of each) is tile-aligned: XLA's figure grows by exactly the arrays' own bytes.
  added = wide["argument_bytes_unpadded"] - narrow["argument_bytes_unpadded"]
  assert wide["argument_bytes"] - narrow["argument_bytes"] == added
  # Parameters (hidden kernel from 32 features, BatchNorm scale and bias, output kernel) with
  # their two Adam moments, and BatchNorm's mean and variance; float32, halved by fsdp.
  assert added == (3 * (32 * 2048 + 2 * 2048 + 2048 * 128) + 2 * 2048) * 4 // 2


def test_bad_topologies_and_meshes_are_named_with_the_fix():
  with pytest.raises(ValueError, match=r"--topology='v5e-16': must be GENERATION:SHAPE .* "
                                       r"e.g. v5e:16x16"):
    aot_compile.topology_devices("v5e-16")
  with pytest.raises(ValueError, match=r"--topology='v5e:3x3' is not a slice libtpu can build"):
    aot_compile.topology_devices("v5e:3x3")
  chip, devices = aot_compile.topology_devices("v4:2x2x1")
  assert len(devices) == 4 and chip.megacore  # One device per chip, as v4 runs.
  with pytest.raises(ValueError, match=r"config.mesh=\[\('data', 8\)\] needs 8 devices but "
                                       r"only 4 are available.*--topology=v5e:2x2: 4 chips"):
    aot_compile.compile_step(common.override(_config(), {"mesh": (("data", 8),)}), "v5e:2x2")


def test_a_step_too_large_for_the_chip_is_reported_with_what_it_needs_and_the_fix():
  c = tiny_config(batch_size=2**17, **{"eval.evaluators": (), "data.image_size": 32,
                                      "augment.crop_size": 32})
  result = aot_compile.compile_step(c, "v5e:2x2")
  assert not result["fits"] and result["roofline"] is None
  assert "exceeds available HBM" in result["error"]
  assert result["per_chip"]["temp_bytes"] > 16 * 2**30
  text = aot_compile.table(result)
  assert "DOES NOT FIT: Ran out of memory on HBM" in text and "To fit: a smaller" in text


def test_max_batch_bisects_to_the_largest_batch_that_fits(monkeypatch):
  # Per-chip bytes as a known function of the batch stand in for the compiles.
  def fake_compile(config, topology, vocab_size=None):
    total = 1000 * config.batch_size
    return {"batch_size": config.batch_size, "fits": total <= 37_000, "compile_s": 0.0,
            "per_chip": {"total_bytes": total}}
  monkeypatch.setattr(aot_compile, "compile_step", fake_compile)
  result = aot_compile.max_batch(_config(), "v5e:2x2")
  assert result["max_batch"] == 36  # Multiples of the 4 data-parallel chips.
  assert [b for b, *_ in result["tried"]][:3] == [32, 64, 48]
  assert result["largest"]["batch_size"] == 36
  # With a tolerance of 30%, bisection stops once the bracket is under 30% of the batch.
  coarse = aot_compile.max_batch(_config(), "v5e:2x2", tolerance=0.3)
  assert coarse["max_batch"] == 32 and [b for b, *_ in coarse["tried"]] == [32, 64, 48, 40]
  # Each device's 8 examples split into 2 micro-batches of 2 slices: multiples of 16 only.
  split = aot_compile.max_batch(common.override(_config(), {"micro_batches": 2,
                                                            "model.block_chunks": 2}), "v5e:2x2")
  assert split["max_batch"] == 32 and [b for b, *_ in split["tried"]] == [32, 64, 48]


def test_cli_prints_the_table_and_writes_json(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "tools.aot_compile", "--config=configs/siglip_digits.py",
       "--topology=v5e:2x2", "--set", "batch_size=16", "--set", "model.image.variant=Ti/8",
       "--set", "model.text.depth=1", "--set", "loss.impl=ring", "--set", "model.remat=full",
       "--set", "model.block_chunks=2", f"--json={tmp_path / 'r.json'}"], cwd=ROOT,
      env=subprocess_env(1), text=True, capture_output=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "r.json").read_text())
  assert result["method"] == "siglip" and result["mesh"] == {"data": 4}
  assert "siglip batch 16 on v5e:2x2 (4 chips" in out.stderr and "fits" in out.stderr
  # The blocks loop over 2 slices of each chip's 4 pairs: XLA's bytes see one slice.
  assert result["roofline"]["memory_term_lower_bound"]
  assert "memory term a lower bound" in out.stderr
  # A flag or config it gets wrong: the message alone, exit 1, as big_contrast.main.
  for flag, message in [("--topology=v3:2x2", "FATAL ValueError: --topology='v3:2x2': must be "
                                              "GENERATION:SHAPE"),
                        ("--set=optimizer.lrr=1", "FATAL ValueError: config.optimizer.lrr is "
                                                  "not a config key")]:
    bad = subprocess.run([sys.executable, "-m", "tools.aot_compile",
                          "--config=configs/simclr_digits.py", "--topology=v5e:2x2", flag],
                         cwd=ROOT, env=subprocess_env(1), text=True, capture_output=True,
                         timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith(message), bad.stderr[-3000:]
    assert "Traceback" not in bad.stderr
