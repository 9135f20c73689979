"""THE training loop: train_and_evaluate(config, workdir). Nothing else trains.

It knows nothing about any method or evaluator: run.setup builds the Run (method, mesh,
step, sources); this file steps, logs, evaluates and checkpoints it.
"""
import contextlib
import fcntl
import json
import logging as py_logging
import os
import shutil
import signal
import socket
import sys
import time

from absl import logging
import jax
import numpy as np
from jax.experimental import multihost_utils

from big_contrast import checkpoint
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


class WorkdirInUse(RuntimeError):
  """Another process is training in this workdir."""


class WorkdirNotWritable(PermissionError):
  """The workdir cannot be created or written: nothing of this session is logged there."""


class _WorkdirLock:
  """An exclusive lock on WORKDIR/lock while a run trains there (process 0 of the run holds
  it). flock: the kernel drops it when its holder dies, however it dies, so a stale lock never
  blocks a restart; on NFS, Linux maps it to a lock the server keeps for all clients. The file
  names the holder (host, pid, start time, command)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "lock")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise NotADirectoryError(f"--workdir={workdir!r} is a file; name a directory (it is "
                               "created if missing).")
    try:
      os.makedirs(workdir, exist_ok=True)
      self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirNotWritable(f"--workdir={workdir!r} cannot be written ({e.strerror}); "
                               "choose a directory this user can write.") from None

  def acquire(self):
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(self.path) as f:
        holder = f.read().strip() or "another process (it has not written its name yet)"
      self.release()
      raise WorkdirInUse(
          f"{os.path.dirname(self.path)} is in use by {holder}. Two runs in one workdir "
          "would delete each other's checkpoints: wait for it to end (or stop it), or use "
          "another --workdir.") from None
    except OSError as e:  # A filesystem without locks (some Lustre or FUSE mounts).
      logging.warning("Cannot lock %s (%s): make sure no other run uses this workdir.",
                      self.path, e.strerror)
      return
    os.ftruncate(self.fd, 0)
    os.pwrite(self.fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)})\n")
              .encode(), 0)

  def release(self):
    os.close(self.fd)  # Drops the lock; the file stays (deleting it would race a new holder).


@contextlib.contextmanager
def _lock_workdir(workdir: str):
  """The workdir's lock, held by process 0; every process fails together if it is taken."""
  lock = error = None
  if jax.process_index() == 0:
    try:
      lock = _WorkdirLock(workdir)
      lock.acquire()
    except (WorkdirInUse, OSError) as e:
      lock, error = None, e
  if jax.process_count() > 1:
    failed = multihost_utils.process_allgather(np.int32(error is not None)).any()
    if failed and error is None:
      raise WorkdirInUse(f"Process 0 could not take {workdir}/lock (its log says why).")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


@contextlib.contextmanager
def _log_file(workdir: str):
  """Copies this process's log (warnings and errors included) to WORKDIR/log.txt
  (log.process_<i>.txt for the others), appending across resumes. The traceback of an
  error that stops the run goes there; the console gets the error itself."""
  index = jax.process_index()
  os.makedirs(workdir, exist_ok=True)  # Other hosts may not share process 0's disk.
  handler = py_logging.FileHandler(
      os.path.join(workdir, "log.txt" if index == 0 else f"log.process_{index}.txt"))
  handler.setFormatter(py_logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  root = py_logging.getLogger()
  root.addHandler(handler)
  try:
    yield
  except Exception as e:
    handler.handle(py_logging.LogRecord(__name__, py_logging.ERROR, __file__, 0,
                                        "The run stopped: %s", (e,), sys.exc_info()))
    raise
  finally:
    root.removeHandler(handler)
    handler.close()


def _check_finite(pending, policy, ckpt):
  """Reads the finiteness of steps already dispatched; raises (policy 'error') or logs."""
  for step, m in pending:
    if bool(m["finite"]):
      continue
    bad = {k: float(v) for k, v in sorted(m.items(), key=lambda kv: kv[0] != "loss")
           if k != "finite" and not np.isfinite(v).all()}  # The loss first.
    # Finite metrics: the optimizer's update itself made parameters non-finite.
    what = f"{', '.join(bad)} ({bad})" if bad else "parameters after the update"
    if policy == "skip":
      logging.warning("Step %d: non-finite %s; skipped (config.nonfinite='skip'): the state "
                      "is the previous step's.", step, what)
      continue
    raise NonFiniteError(
        f"Step {step}: non-finite {what}. Nothing from this step was "
        f"applied or saved; {_last_checkpoint(ckpt, 'untouched')}. "
        "Lower config.optimizer.lr, set config.optimizer.grad_clip_norm, check the data, or "
        "set config.nonfinite='skip' to skip such steps (they are counted).")


def _last_checkpoint(ckpt, kept: str) -> str:
  step = ckpt.latest_step()
  return ("no checkpoint was written yet" if step is None else
          f"the last checkpoint (step {step}) is {kept}")


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config.method`, evaluating and checkpointing in `workdir`; returns final metrics.

  SIGTERM / SIGINT stop it after the current step with a checkpoint (results["preempted"]
  names the signal); the next call with the same workdir resumes from it.
  """
  # Nothing is read or written in the workdir before the lock is held.
  with _StopSignals() as signals, _lock_workdir(workdir), _log_file(workdir):
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
      text = f.read()
    try:
      json.loads(text)
    except json.JSONDecodeError as e:
      # Damaged outside this code (it writes the file atomically): keep a copy, and resume
      # with the checkpoint's own check of shapes; the file is written again below.
      logging.warning("%s is not valid JSON (%s): resuming without comparing configs (the "
                      "checkpoint's shapes are still checked); the damaged file is kept as "
                      "%s.corrupt.", saved_config, e, saved_config)
      if jax.process_index() == 0:
        shutil.copyfile(saved_config, saved_config + ".corrupt")
    else:
      run_config.check_resume(text, config, saved_config)
  ts = ckpt.restore_latest(checkpoint.abstract_like(run.abstract, run.state_sharding))
  if jax.process_index() == 0:  # The run's config, for resuming, tools/export_pytorch.py.
    with open(saved_config + ".tmp", "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(saved_config + ".tmp", saved_config)  # Never a half-written config.json.
  if ts is None:
    ts = run.initial_state()
  else:
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(ts["step"]))
  step = int(ts["step"])

  # Rows past the restored step belong to a run that died before its next checkpoint.
  logger = metrics.MetricLogger(workdir, total_steps, resume_step=step, start_time=start_time,
                                config=config)
  first_step = step
  evaluate_now = lambda: run.evaluate(ts)
  n_params = sum(x.size for x in jax.tree.leaves(run.abstract["params"]))
  logging.info("%s: %d steps of global batch %d on mesh %s, %.2fM parameters; train state "
               "%.1f MiB per device.", config.method, total_steps, config.batch_size,
               dict(run.mesh.shape), n_params / 1e6,
               sharding.bytes_per_device(run.abstract, run.state_sharding) / 2**20)

  results = {}
  if step == 0 and config.eval.get("at_start"):
    results["init"] = evaluate_now()
    logger.evaluation(0, {k.replace("eval/", "eval_init/"): v
                          for k, v in results["init"].items()}, config)
    logging.info("Random-init evaluation: %s", results["init"])

  history, compiled, pending, preempted, first_note = [], False, [], None, ""
  policy = config.get("nonfinite", "error")
  max_skipped = int(config.nonfinite_max_fraction * total_steps)
  batch_iter = batches.iterate(step) if step < total_steps else iter(())
  num_workers = config.data.get("num_workers", 0)
  replaced_logged = 0  # Examples that stood in for unusable records, up to the last log.
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
      first_note = f"first step {time.perf_counter() - waited:.1f} s (compilation included)"
      if step % config.log_every_steps and step != total_steps:  # Else it is logged below.
        logger.first_step(step, {k: v for k, v in step_metrics.items() if k != "finite"},
                          first_note)
        first_note = ""
    last = step == total_steps
    preempted = signals.stop() and (signals.requested or "a signal to another process")
    log_now = step % config.log_every_steps == 0 or last
    eval_now = (config.eval.every_steps and step % config.eval.every_steps == 0) or last
    # Steps are checked one behind (the device runs ahead), all of them before anything is
    # logged, evaluated or saved.
    sync = log_now or eval_now or preempted or ckpt.due(step, force=last)
    _check_finite(pending if sync else pending[:-1], policy, ckpt)
    if policy == "skip" and sync and int(ts["nonfinite_steps"]) > max_skipped:
      raise NonFiniteError(
          f"Step {step}: {int(ts['nonfinite_steps'])} steps were skipped as non-finite, more "
          f"than config.nonfinite_max_fraction={config.nonfinite_max_fraction} of the run's "
          f"{total_steps} steps: the training diverges; {_last_checkpoint(ckpt, 'kept')}. "
          "Lower config.optimizer.lr, set "
          "config.optimizer.grad_clip_norm, check the data, or raise the fraction.")
    pending = [] if sync else pending[-1:]
    if log_now:
      extra = {"nonfinite_steps": int(ts["nonfinite_steps"])} if policy == "skip" else {}
      replaced = _over_processes(batches.replaced)
      if replaced > replaced_logged:
        extra["replaced_examples"] = replaced - replaced_logged
        replaced_logged = replaced
      logger.progress(step, {**metrics.average(history), "lr": float(run.lr_fn(step - 1)), **extra},
                      config.batch_size, num_workers, note=first_note)
      history, first_note = [], ""
    if eval_now:
      results["final"] = evaluate_now()
      logger.evaluation(step, results["final"], config)
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
  if "init" not in results and logger.init_eval:  # Evaluated in an earlier session.
    results["init"] = logger.init_eval
  results.update(step=step, wall_time_s=logger.elapsed_s(),
                 session=dict(steps=step - first_step, wall_time_s=time.time() - start_time),
                 checkpoint_dir=ckpt.directory, metrics_file=logger.jsonl_path,
                 tensorboard_dir=logger.tb_dir, train_state=ts,
                 nonfinite_steps=int(ts["nonfinite_steps"]),
                 replaced_examples=_over_processes(batches.replaced))
  return results


def _over_processes(count: int) -> int:
  """The sum of every process's `count` (each reads its own rows of the batches)."""
  if jax.process_count() == 1:
    return count
  return int(np.sum(multihost_utils.process_allgather(np.int64(count))))
