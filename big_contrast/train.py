"""THE training loop: train_and_evaluate(config, workdir). Nothing else trains.

It knows nothing about any method or evaluator: run.setup builds the Run (method, mesh,
step, sources); this file steps, logs, evaluates and checkpoints it.
"""
import contextlib
import os
import signal
import time

from absl import logging
import jax
import numpy as np
from jax.experimental import multihost_utils

from big_contrast import checkpoint
from big_contrast import init_from
from big_contrast import metrics
from big_contrast import run_config
from big_contrast import run as run_lib
from big_contrast import sharding


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss, gradient or metric (config.nonfinite='error')."""


class _StopSignals(contextlib.AbstractContextManager):
  """SIGTERM / SIGINT set `requested` (the loop saves and stops after the current step);
  a second SIGINT interrupts at once. Handlers are restored on exit."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      signal.default_int_handler(signum, frame)
    self.requested = signal.Signals(signum).name
    logging.warning("%s received: stopping after this step with a checkpoint (send SIGINT "
                    "again to interrupt at once).", self.requested)

  def __enter__(self):
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: no handlers (the caller handles signals).
        pass
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def stop(self) -> bool:
    """Whether any process was asked to stop (every process must stop at the same step)."""
    if jax.process_count() == 1:
      return bool(self.requested)
    return bool(multihost_utils.process_allgather(np.int32(bool(self.requested))).any())


def _check_finite(pending, policy, ckpt):
  """Reads the finiteness of steps already dispatched; raises (policy 'error') or logs."""
  for step, m in pending:
    if bool(m["finite"]):
      continue
    bad = {k: float(v) for k, v in sorted(m.items(), key=lambda kv: kv[0] != "loss")
           if k != "finite" and not np.isfinite(v).all()}  # The loss first.
    if policy == "skip":
      logging.warning("Step %d: non-finite %s; skipped (config.nonfinite='skip'): the state "
                      "is the previous step's.", step, bad)
      continue
    raise NonFiniteError(
        f"Step {step}: non-finite {', '.join(bad)} ({bad}). Nothing from this step was "
        f"applied or saved; the last checkpoint (step {ckpt.latest_step()}) is untouched. "
        "Lower config.optimizer.lr, set config.optimizer.grad_clip_norm, check the data, or "
        "set config.nonfinite='skip' to skip such steps (they are counted).")


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config.method`, evaluating and checkpointing in `workdir`; returns final metrics.

  SIGTERM / SIGINT stop it after the current step with a checkpoint (results["preempted"]
  names the signal); the next call with the same workdir resumes from it.
  """
  with _StopSignals() as signals:
    return _train_and_evaluate(config, workdir, signals)


def _train_and_evaluate(config, workdir, signals) -> dict:
  start_time = time.time()
  # Everything that can be wrong with the config fails here, before any compile.
  run = run_lib.setup(config)
  total_steps = run.schedule.total_steps
  batches = run.train_batches()
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep)
  saved_config = os.path.join(workdir, "config.json")
  if ckpt.latest_step() is not None and os.path.exists(saved_config):
    with open(saved_config) as f:
      run_config.check_resume(f.read(), config, saved_config)
  ts = ckpt.restore_latest(checkpoint.abstract_like(run.abstract, run.state_sharding))
  if jax.process_index() == 0:  # The run's config, for resuming, tools/export_pytorch.py.
    with open(saved_config + ".tmp", "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(saved_config + ".tmp", saved_config)  # Never a half-written config.json.
  if ts is None:
    # Read and checked before the first compile; applied to the fresh state.
    source = config.get("init_from")
    pretrained = (init_from.load(source, run.abstract, config)
                  if init_from.requested(source) else {})
    ts = run.init_state()
    if pretrained:
      ts = init_from.apply(ts, pretrained, run.state_sharding)
      logging.info("Initialised %d arrays from %s.", len(pretrained),
                   source.workdir or source.torch.path)
  else:
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(ts["step"]))
  step = int(ts["step"])

  # Rows past the restored step belong to a run that died before its next checkpoint.
  logger = metrics.MetricLogger(workdir, total_steps, resume_step=step)
  evaluate_now = lambda: run.evaluate(ts)
  n_params = sum(x.size for x in jax.tree.leaves(run.abstract["params"]))
  logging.info("%s: %d steps of global batch %d on mesh %s, %.2fM parameters; train state "
               "%.1f MiB per device.", config.method, total_steps, config.batch_size,
               dict(run.mesh.shape), n_params / 1e6,
               sharding.bytes_per_device(run.abstract, run.state_sharding) / 2**20)

  results = {}
  if step == 0 and config.eval.get("at_start"):
    results["init"] = evaluate_now()
    logger.write(0, {k.replace("eval/", "eval_init/"): v for k, v in results["init"].items()})
    logging.info("Random-init evaluation: %s", results["init"])

  history, compiled, pending, preempted = [], False, [], None
  policy = config.get("nonfinite", "error")
  batch_iter = batches.iterate(step) if step < total_steps else iter(())
  num_workers = config.data.get("num_workers", 0)
  while True:
    waited = time.perf_counter()
    local_batch = next(batch_iter, None)
    if local_batch is None:
      break
    logger.data_wait(time.perf_counter() - waited)
    ts, step_metrics = run.train_step(ts, run.global_batch(local_batch))
    step += 1
    pending.append((step, step_metrics))
    history.append({k: v for k, v in step_metrics.items() if k != "finite"})
    if not compiled:  # Keep compile time out of the first img/s and ETA.
      compiled = jax.block_until_ready(ts["step"]) is not None
      logger.restart_clock(step)
    last = step == total_steps
    preempted = signals.stop() and (signals.requested or "a signal to another process")
    log_now = step % config.log_every_steps == 0 or last
    eval_now = (config.eval.every_steps and step % config.eval.every_steps == 0) or last
    # Steps are checked one behind (the device runs ahead), all of them before anything is
    # logged, evaluated or saved.
    sync = log_now or eval_now or preempted or ckpt.due(step, force=last)
    _check_finite(pending if sync else pending[:-1], policy, ckpt)
    pending = [] if sync else pending[-1:]
    if log_now:
      extra = {"nonfinite_steps": int(ts["nonfinite_steps"])} if policy == "skip" else {}
      logger.progress(step, {**metrics.average(history), "lr": float(run.lr_fn(step - 1)), **extra},
                      config.batch_size, num_workers)
      history = []
    if eval_now:
      results["final"] = evaluate_now()
      logger.write(step, results["final"])
      logging.info("Evaluation at step %d: %s", step, results["final"])
      logger.restart_clock(step)
    if ckpt.maybe_save(step, ts, force=last or bool(preempted)):
      logger.restart_clock(step)
    if last or preempted:
      break
  getattr(batch_iter, "close", lambda: None)()  # Stops grain's worker processes.
  if preempted:
    logging.warning("Stopped at step %d by %s; checkpoint saved in %s. Run the same command "
                    "to resume.", step, preempted, ckpt.directory)
    results["preempted"] = preempted
  elif "final" not in results:  # Nothing left to train: the run had already finished.
    results["final"] = evaluate_now()
  logger.close()
  ckpt.close()
  results.update(step=step, wall_time_s=time.time() - start_time,
                 checkpoint_dir=ckpt.directory, metrics_file=logger.jsonl_path,
                 tensorboard_dir=logger.tb_dir, train_state=ts)
  return results
