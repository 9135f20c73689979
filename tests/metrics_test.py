"""The progress line's throughput and input-wait share (big_contrast/metrics.py)."""
import json

from absl import logging as absl_logging

from big_contrast import metrics


class _Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_data_wait_share_is_logged_and_an_input_bound_run_warns_once(tmp_path, monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(metrics.time, "time", clock)
  warnings = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *a: warnings.append(msg % a))
  logger = metrics.MetricLogger(str(tmp_path), total_steps=30)
  logger.restart_clock(0)
  for step, wait in ((10, 0.5), (20, 6.0), (30, 8.0)):   # Of 10 s between logs.
    clock.now += 10.0
    logger.data_wait(wait)
    logger.progress(step, {"loss": 1.0}, images_per_step=64, num_workers=3)
  logger.close()
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["data_wait_frac"] for r in rows] == [0.05, 0.6, 0.8]
  assert [r["img_per_sec"] for r in rows] == [64.0] * 3
  assert len(warnings) == 1 and "60% of step time" in warnings[0]
  assert "config.data.num_workers (now 3" in warnings[0]
