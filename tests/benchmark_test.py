"""The benchmark tool: its analytic FLOP count against hand counts and XLA, and a CPU run."""
import json

import jax
import jax.numpy as jnp
import pytest

from conftest import tiny_config
from tools import benchmark


def _xla_flops(f, *args):
  cost = jax.jit(f).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]


def _flops(f, *args):
  return benchmark.jaxpr_flops(jax.make_jaxpr(f)(*args).jaxpr)


def test_matmul_count_is_2mnk_and_scans_multiply():
  x, w = jnp.ones((4, 8, 16)), jnp.ones((16, 32))
  assert _flops(lambda x, w: x @ w, x, w) == 2 * 4 * 8 * 16 * 32

  def body(c, _):
    return c @ w[:, :16], None
  assert _flops(lambda c: jax.lax.scan(body, c, None, length=5)[0], x[0]) == 5 * 2 * 8 * 16 * 16


def test_loops_are_found_inside_jits_remat_and_shard_map():
  from big_contrast import sharding
  from big_contrast.losses import clip
  loops = lambda f, *args: benchmark.has_loops(jax.make_jaxpr(f)(*args).jaxpr)
  x = jnp.ones((8, 4))
  scan = lambda c, n: jax.lax.scan(lambda c, _: (c * 2, None), c, None, length=n)[0]
  assert not loops(lambda x: jnp.tanh(x @ x.T), x)
  assert not loops(lambda x: scan(x, 1), x)  # One trip: XLA sees all of it.
  assert loops(jax.jit(jax.checkpoint(lambda x: scan(x, 3).sum())), x)
  assert loops(lambda x, n: jax.lax.fori_loop(0, n, lambda i, c: c + 1, x), x, 3)  # while
  mesh = sharding.make_mesh([("data", 4)], jax.devices()[:4])  # A 3-step ring.
  assert loops(lambda a, b: clip.sigmoid_clip_ring(a, b, 10.0, -10.0, mesh), x, x)
  assert not loops(lambda a, b: clip.sigmoid_clip(a, b, 10.0, -10.0), x, x)


@pytest.mark.parametrize("stride,padding", [(1, "VALID"), (2, "SAME"), (1, "SAME")])
def test_convolution_count_matches_xla_exactly(stride, padding):
  conv = lambda w, x: jax.lax.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  w, x = jnp.ones((3, 3, 4, 8)), jnp.ones((2, 10, 10, 4))
  assert _flops(conv, w, x) == _xla_flops(conv, w, x)
  if padding == "VALID":
    assert _flops(conv, w, x) == 2 * 2 * 8 * 8 * 8 * 4 * 9


def test_training_step_count_agrees_with_xla_cost_analysis():
  # Matmuls dominate: the analytic count is a few % below XLA's, which adds elementwise ops.
  from big_contrast import models
  model = models.vit("Ti/4", width=32, depth=2, heads=2)
  x = jnp.ones((4, 16, 16, 3))
  params = model.init(jax.random.PRNGKey(0), x)
  step = jax.grad(lambda p, x: jnp.sum(model.apply(p, x) ** 2))
  ours, xla = _flops(step, params, x), _xla_flops(step, params, x)
  assert 0.8 * xla < ours <= xla


@pytest.mark.parametrize("data", ["synthetic", "pipeline"])
def test_benchmark_runs_on_cpu_and_reports(data, tmp_path):
  config = tiny_config("simclr_digits", mesh=[("data", 2)])
  result = benchmark.run(config, data=data, steps=2, warmup=1, peak_tflops=1.0)
  assert result["images_per_s"] == pytest.approx(16 / result["step_s_median"])
  assert result["step_s_p10"] <= result["step_s_median"] <= result["step_s_p90"]
  # MFU is the analytic matmul count over the step time and the given peak (1 TFLOP/s × 2).
  assert result["mfu"] == pytest.approx(
      result["matmul_flops_per_step"] / result["step_s_median"] / 2e12)
  # The analytic count covers the convolutions and matmuls, most of XLA's count.
  assert 0.75 < result["matmul_flops_per_step"] / result["xla_flops_per_step"] < 1.25
  assert result["devices"] == 2 and result["batch_size"] == 16 and result["steps"] == 2
  assert result["memory"]["temp_bytes"] > 0 and result["compile_s"] > 0
  assert ("host_images_per_s" in result) == (data == "pipeline")
  json.dumps(result)
  assert "images/s" in benchmark.table(result)


def test_benchmark_cli_writes_json(tmp_path):
  out = tmp_path / "r.json"
  benchmark.main(["--config=configs/clip_digits.py", "--steps=1", "--warmup=0",
                  "--set", "model.image.depth=1", "--set", "model.text.depth=1",
                  "--batch_size=16", f"--json={out}"])
  result = json.loads(out.read_text())
  assert result["method"] == "clip" and result["batch_size"] == 16


def test_unknown_workload_is_a_clear_error():
  with pytest.raises(ValueError, match="--workload='nope' is unknown"):
    benchmark.load_config(workload="nope")
  assert set(benchmark.WORKLOADS) == {"siglip_b16", "clip_b16", "simclr_r50"}
