"""Training metrics: clu aggregation, a progress line, metrics.jsonl and TensorBoard.

TensorBoard events are written with tensorboardX, since clu.metric_writers
imports TensorFlow.
"""
import contextlib
import fcntl
import json
import os
import time
import uuid

from absl import logging
import jax
import numpy as np
from clu import metrics as clu_metrics
import tensorboardX

from big_contrast import settings

# The share of step time waiting for input above which the run warns.
INPUT_BOUND = 0.25


def average(history: list[dict]) -> dict:
  """Means over the steps since the last log, with clu's Average."""
  history = jax.device_get(history)
  return {k: float(clu_metrics.Average.from_model_output(
      np.asarray([h[k] for h in history], np.float32)).compute()) for k in history[0]}


# `config.wandb`: also log to Weights & Biases (off unless enabled). mode "offline" writes the
# run under WORKDIR/wandb for a later `wandb sync`; "online" needs `wandb login`. The run id is
# kept in WORKDIR/wandb_id, so a resumed run continues the same W&B run.
WANDB = dict(enabled=settings.boolean(False), project="big_contrast", entity="", name="",
             mode=settings.choice("offline", ("offline", "online")), tags=())


def hparams(config) -> dict:
  """The config as TensorBoard hparams: {"optimizer.lr": 0.001, "mesh": "(('data', -1),)"}."""
  from big_contrast import run_config  # run_config reads this module's settings.
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
          for k, v in run_config.flatten(config).items()}


class MetricLogger:
  """Writes each logged step to stdout, `metrics.jsonl` and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, total_steps: int, resume_step: int | None = 0,
               start_time=None, config=None):
    """`resume_step`: the step the run starts from (rows logged past it are dropped); None
    appends to what is there and drops nothing (an evaluation beside a training run).
    `config`: the run's, for Weights & Biases (`config.wandb`)."""
    self.total_steps = total_steps
    self.active = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.tb_dir = os.path.join(workdir, "tensorboard")
    # What earlier sessions of a resumed run logged: their time, their random-init evaluation.
    self.earlier_time_s, self.init_eval = 0.0, {}
    self._start = time.time() if start_time is None else start_time
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      for row in self._drop_rows_after(resume_step) if resume_step is not None else ():
        self.earlier_time_s = max(self.earlier_time_s, row.get("elapsed_s", 0.0))
        self.init_eval.update({k.replace("eval_init/", "eval/"): v for k, v in row.items()
                               if k.startswith("eval_init/")})
      # An evaluation beside a training run opens the file for each row (under the lock).
      self._jsonl = open(self.jsonl_path, "a") if resume_step is not None else None
      # On resume, TensorBoard hides the events the dead run wrote past the restored step.
      self._tb = tensorboardX.SummaryWriter(self.tb_dir,
                                            purge_step=resume_step + 1 if resume_step else None)
    self._wandb = None
    if self.active and config is not None and config.get("wandb", {}).get("enabled"):
      self._wandb = _wandb_run(workdir, config, evaluation=resume_step is None)
    self._t0 = self._tick = time.time()
    self._tick_step = None
    self._data_wait = 0.0
    self._warned_input = False

  def _drop_rows_after(self, step: int) -> list:
    """Removes rows logged after `step`: on resume they are about to be logged again. A line
    that does not parse (a process killed mid-write leaves a torn last line) is dropped with
    a warning; the old file is replaced atomically. Returns the rows kept."""
    if not os.path.exists(self.jsonl_path):
      return []
    rows, kept = [], []
    with self._rows_lock(), open(self.jsonl_path) as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
          keep = row["step"] <= step
        except (ValueError, KeyError, TypeError):
          logging.warning("%s line %d is not a metrics row (%r): dropped (a write cut short).",
                          self.jsonl_path, number, line[:80])
          continue
        if keep:
          rows.append(line if line.endswith("\n") else line + "\n")
          kept.append(row)
      with open(self.jsonl_path + ".tmp", "w") as out:
        out.writelines(rows)
      os.replace(self.jsonl_path + ".tmp", self.jsonl_path)
    return kept

  @contextlib.contextmanager
  def _rows_lock(self):
    """Held while the file is rewritten (a resume) and while an evaluation made beside the run
    appends: an appended row never lands in the file being replaced."""
    with open(self.jsonl_path + ".lock", "a") as lock:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX)
      except OSError:  # A filesystem without locks: as before, unguarded.
        pass
      yield

  def elapsed_s(self) -> float:
    """The run's wall time so far, over every session (as far as the kept rows tell)."""
    return self.earlier_time_s + time.time() - self._start

  def write(self, step: int, values: dict):
    if not self.active:
      return
    row = json.dumps({"step": step, **values}) + "\n"
    if self._jsonl is None:
      with self._rows_lock(), open(self.jsonl_path, "a") as f:
        f.write(row)
    else:
      self._jsonl.write(row)
      self._jsonl.flush()
    if self._wandb is not None:
      self._wandb.log({"step": step, **values})
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def evaluation(self, step: int, values: dict, config):
    """An evaluation's metrics, and the run's config beside them as TensorBoard hparams (the
    HParams dashboard compares runs by them)."""
    self.write(step, values)
    if self.active:
      for summary in tensorboardX.summary.hparams(hparams(config), dict.fromkeys(values, 0.0)):
        self._tb.file_writer.add_summary(summary, step)
      self._tb.flush()

  def data_wait(self, seconds: float):
    """Adds time the loop spent waiting for its next input batch."""
    self._data_wait += seconds

  def progress(self, step: int, values: dict, images_per_step: int, num_workers: int = 0,
               note: str = ""):
    """Logs train metrics with throughput, ETA and the share of step time spent waiting for
    input (data_wait_frac, as open_clip logs data time beside batch time), all measured since
    the previous call; warns once when input holds the device back."""
    now = time.time()
    if self._tick_step is not None and step > self._tick_step:
      secs_per_step = (now - self._tick) / (step - self._tick_step)
      wait = min(1.0, self._data_wait / max(now - self._tick, 1e-9))
      values = {**values, "img_per_sec": images_per_step / secs_per_step,
                "data_wait_frac": wait, "elapsed_s": self.elapsed_s()}
      eta = f"{(self.total_steps - step) * secs_per_step / 60:.1f} min"
      if wait > INPUT_BOUND and not self._warned_input:
        self._warned_input = True
        logging.warning(
            "Input is the bottleneck: %.0f%% of step time went to waiting for the next batch. "
            "Raise config.data.num_workers (now %d; each worker decodes on one host core), "
            "prepare the data with tools.prepare_data, or lower data.image_size.",
            100 * wait, num_workers)
    else:
      eta = "?"
    self._tick, self._tick_step, self._data_wait = now, step, 0.0
    self.write(step, values)
    self._line(step, values, note or f"ETA {eta}")

  def first_step(self, step: int, values: dict, note: str):
    """The console line of a session's first step, whose time is mostly compilation (not
    written to metrics: the logged steps stay those of config.log_every_steps)."""
    self._line(step, jax.device_get(values), note)

  def _line(self, step: int, values: dict, tail: str):
    shown = "  ".join(f"{k}={float(v):.4g}" for k, v in values.items())
    logging.info("step %d/%d  %s  %s", step, self.total_steps, shown, tail)

  def restart_clock(self, step: int):
    """Excludes compile and evaluation time from the next throughput measurement."""
    self._tick, self._tick_step, self._data_wait = time.time(), step, 0.0

  def close(self):
    if self.active:
      if self._jsonl is not None:
        self._jsonl.close()
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


def _wandb_run(workdir: str, config, evaluation: bool):
  """The W&B run of `workdir` (resumed by its id), or, for an evaluation made outside the
  training loop, a run of its own in the training run's group. Rows are plotted against their
  "step" field: W&B's own step only grows, and a resumed run logs steps again from its
  checkpoint (the dead session's rows past it stay in W&B, as logged)."""
  import wandb
  cfg = config.wandb
  id_path = os.path.join(workdir, "wandb_id")
  if os.path.exists(id_path):
    with open(id_path) as f:
      run_id = f.read().strip()
  else:
    run_id = uuid.uuid4().hex[:12]
    if not evaluation:
      with open(id_path, "w") as f:
        f.write(run_id)
  name = cfg.name or os.path.basename(os.path.normpath(workdir))
  kw = (dict(job_type="evaluate", name=f"{name} evaluation") if evaluation else
        dict(id=run_id, resume="allow", job_type="train", name=name))
  run = wandb.init(project=cfg.project, entity=cfg.entity or None, mode=cfg.mode, dir=workdir,
                   group=run_id, config=hparams(config), tags=list(cfg.tags),
                   settings=wandb.Settings(silent=True, console="off"), **kw)
  run.define_metric("step")
  run.define_metric("*", step_metric="step")
  return run
