"""Training metrics: clu aggregation, a progress line, metrics.jsonl and TensorBoard.

TensorBoard events are written with tensorboardX, since clu.metric_writers
imports TensorFlow.
"""
import json
import os
import time

from absl import logging
import jax
import numpy as np
from clu import metrics as clu_metrics
import tensorboardX


def average(history: list[dict]) -> dict:
  """Means over the steps since the last log, with clu's Average."""
  history = jax.device_get(history)
  return {k: float(clu_metrics.Average.from_model_output(
      np.asarray([h[k] for h in history], np.float32)).compute()) for k in history[0]}


class MetricLogger:
  """Writes each logged step to stdout, `metrics.jsonl` and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, total_steps: int, resume_step: int = 0):
    self.total_steps = total_steps
    self.active = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.tb_dir = os.path.join(workdir, "tensorboard")
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self._drop_rows_after(resume_step)
      self._jsonl = open(self.jsonl_path, "a")
      self._tb = tensorboardX.SummaryWriter(self.tb_dir)
    self._t0 = self._tick = time.time()
    self._tick_step = None

  def _drop_rows_after(self, step: int):
    """Removes rows logged after `step`: on resume they are about to be logged again."""
    if not os.path.exists(self.jsonl_path):
      return
    with open(self.jsonl_path) as f:
      rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.jsonl_path, "w") as f:
      f.writelines(rows)

  def write(self, step: int, values: dict):
    if not self.active:
      return
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def progress(self, step: int, values: dict, images_per_step: int):
    """Logs train metrics with throughput and ETA measured since the previous call."""
    now = time.time()
    if self._tick_step is not None and step > self._tick_step:
      secs_per_step = (now - self._tick) / (step - self._tick_step)
      values = {**values, "img_per_sec": images_per_step / secs_per_step}
      eta = f"{(self.total_steps - step) * secs_per_step / 60:.1f} min"
    else:
      eta = "?"
    self._tick, self._tick_step = now, step
    self.write(step, values)
    shown = "  ".join(f"{k}={v:.4g}" for k, v in values.items())
    logging.info("step %d/%d  %s  ETA %s", step, self.total_steps, shown, eta)

  def restart_clock(self, step: int):
    """Excludes compile and evaluation time from the next throughput measurement."""
    self._tick, self._tick_step = time.time(), step

  def close(self):
    if self.active:
      self._jsonl.close()
      self._tb.close()
