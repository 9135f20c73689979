"""THE training loop: train_and_evaluate(config, workdir). Nothing else trains.

It knows nothing about any method: a Method (methods/base.py) turns a batch
into a loss; this file shards, steps, logs, evaluates and checkpoints.
"""
import contextlib
import functools
import os
import signal
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
import optax

from big_contrast import checkpoint
from big_contrast import config_check
from big_contrast import evaluate
from big_contrast import grad_cache
from big_contrast import initialize
from big_contrast import methods
from big_contrast import metrics
from big_contrast import optim
from big_contrast import sharding
import input_pipeline


EVALUATORS = ("knn", "linear_probe", "zero_shot", "retrieval")
IMAGE_TEXT_EVALUATORS = ("zero_shot", "retrieval")


def _train_step(method, tx, frozen, micro_batches, mesh, ts, batch):
  # The step's randomness depends only on (seed, step): resuming is exact.
  rng = jax.random.fold_in(ts["rng"], ts["step"])
  if micro_batches > 1:
    (loss, (state, step_metrics)), grads = grad_cache.value_and_grad(
        method, ts["params"], ts["state"], batch, rng, micro_batches, mesh, frozen)
  else:
    def loss_fn(params):
      # Frozen parameters are constants: XLA computes no gradient for them (LiT's locked tower).
      params = optim.stop_frozen(params, frozen)
      return method.loss(params, ts["state"], batch, rng, ts["step"])

    (loss, (state, step_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        ts["params"])
  updates, opt_state = tx.update(grads, ts["opt_state"], ts["params"])
  params = optax.apply_updates(ts["params"], updates)
  params, state = method.after_update(params, state, ts["step"])
  step_metrics = {**step_metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
  # A step with any non-finite metric (a NaN/inf gradient makes grad_norm non-finite) changes
  # nothing but the step and the count: the state stays the last finite one, whatever
  # config.nonfinite then does on the host.
  finite = jnp.all(jnp.stack([jnp.isfinite(v).all() for v in step_metrics.values()]))
  updated = dict(params=params, state=state, opt_state=opt_state)
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated,
                      {k: ts[k] for k in updated})
  return dict(ts, **kept, step=ts["step"] + 1,
              nonfinite_steps=ts["nonfinite_steps"] + (~finite).astype(jnp.int32)), dict(
                  step_metrics, finite=finite)


def _schedule(config, train_size) -> methods.Schedule:
  # The data stream drops nothing at epoch ends, so an epoch is train_size/batch_size steps.
  steps_per_epoch = train_size / config.batch_size
  total = config.get("total_steps") or int(round(config.num_epochs * steps_per_epoch))
  return methods.Schedule(total_steps=total, steps_per_epoch=steps_per_epoch)


def check_evaluators(config, method, test_src):
  """Fails before any compile on evaluators the method or the data cannot serve."""
  names = tuple(config.eval.get("evaluators", ("knn", "linear_probe")))
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f"config.eval.evaluators has unknown {unknown}; choose from {EVALUATORS}.")
  image_text = [n for n in names if n in IMAGE_TEXT_EVALUATORS]
  if image_text and not hasattr(method, "encode_texts"):
    raise ValueError(f"config.eval.evaluators {image_text} need an image-text method "
                     f"(clip, siglip), not {config.method!r}.")
  if "zero_shot" in names and not (getattr(test_src, "class_names", ()) and
                                   config.eval.get("zero_shot_templates")):
    raise ValueError("zero_shot evaluation needs class names from the test data and "
                     "config.eval.zero_shot_templates (e.g. ('a photo of a {}.',)).")
  return names


def run_evaluators(names, method, jitted, ts, sources, num_classes, mesh, config) -> dict:
  """The evaluators `names` on the frozen model; `jitted` holds the method's jitted encoders.

  knn, linear_probe: top-1 of the (image) backbone features, train split -> test split.
  zero_shot: top-1 (and top-5) on the test split, class-name prompts x templates.
  retrieval: image->text and text->image R@1/5/10 over the test split's pairs.
  """
  ev = config.eval
  batch_size = ev.get("batch_size") or config.batch_size
  tokenizer = getattr(method, "tokenizer", None)
  bind = lambda name: functools.partial(jitted[name], ts["params"], ts["state"])
  extract = functools.partial(evaluate.extract, mesh=mesh, batch_size=batch_size)
  train_src, test_src = sources
  out = {}
  if "knn" in names or "linear_probe" in names:
    features = bind("features")
    train_x, train_y = extract(features, train_src, tokenizer=tokenizer)
    test_x, test_y = extract(features, test_src, tokenizer=tokenizer)
    if "knn" in names:
      out["eval/knn_top1"] = float(evaluate.knn_accuracy(
          train_x, train_y, test_x, test_y, num_classes=num_classes, k=ev.knn_k,
          temperature=ev.knn_temperature))
    if "linear_probe" in names:
      out["eval/linear_probe_top1"] = float(evaluate.linear_probe_accuracy(
          train_x, train_y, test_x, test_y, jax.random.PRNGKey(0), num_classes=num_classes,
          epochs=ev.probe_epochs, batch_size=ev.probe_batch_size, lr=ev.probe_lr,
          weight_decay=ev.probe_weight_decay))
  if "zero_shot" in names or "retrieval" in names:
    images, labels = extract(bind("encode_images"), test_src, tokenizer=tokenizer)
    if "zero_shot" in names:
      templates = tuple(ev.zero_shot_templates)
      prompts = evaluate.PromptSource(test_src.class_names, templates, tokenizer)
      texts, _ = extract(bind("encode_texts"), prompts, key="text")
      classifier = evaluate.zero_shot_classifier(
          texts.reshape(len(test_src.class_names), len(templates), -1))
      ks = (1, 5) if len(test_src.class_names) > 5 else (1,)
      acc = evaluate.zero_shot_accuracy(images, classifier, labels, ks=ks)
      out.update({f"eval/zero_shot_top{k}": float(v) for k, v in acc.items()})
    if "retrieval" in names:
      texts, _ = extract(bind("encode_texts"), test_src, key="text", tokenizer=tokenizer)
      recall = evaluate.retrieval_recall(images, texts, np.arange(len(texts)))
      out.update({f"eval/{k}": float(v) for k, v in recall.items()})
  return out


def make_optimizer(config, schedule: methods.Schedule):
  """(optax transformation, learning-rate schedule) of `config.optimizer` for the run."""
  warmup_steps = int(round(config.optimizer.get("warmup_epochs", 0) * schedule.steps_per_epoch))
  return optim.make(config.optimizer, config.batch_size, schedule.total_steps, warmup_steps)


def build_step(config, mesh, method, tx, example_images):
  """The train state's init, its abstract shapes and shardings, and the jitted train step.

  Returns (init(rng) -> train state, init_rng, abstract state, state shardings,
  train_step(state, batch) -> (state, metrics)); nothing is compiled yet.
  """
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))

  def init(rng):
    params, state = method.init(rng, example_images)
    return dict(step=jnp.zeros((), jnp.int32), params=params, state=state,
                opt_state=tx.init(params), rng=train_rng,
                nonfinite_steps=jnp.zeros((), jnp.int32))

  abstract = jax.eval_shape(init, init_rng)
  state_sharding = sharding.param_shardings(abstract, mesh, config.sharding.rules,
                                            config.sharding.min_size)
  frozen = tuple(config.optimizer.get("frozen", ()))
  step_fn = functools.partial(_train_step, method, tx, frozen, config.get("micro_batches", 1),
                              mesh)
  train_step = jax.jit(step_fn,
                       in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sharding, sharding.replicated(mesh)),
                       donate_argnums=0)
  return init, init_rng, abstract, state_sharding, train_step


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
  config_check.check(config)
  optim.check(config.optimizer)
  methods.check(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_rules(config.sharding.rules, mesh)
  sharding.check_batch_size(config.batch_size, mesh)
  if config.eval.get("batch_size"):
    sharding.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
  train_src, test_src, num_classes = input_pipeline.get_sources(config.data)
  schedule = _schedule(config, len(train_src))
  total_steps = schedule.total_steps
  method = methods.get(config, schedule)
  grad_cache.check(config, method, mesh)
  evaluators = check_evaluators(config, method, test_src)
  tokenizer = getattr(method, "tokenizer", None)
  tx, lr_fn = make_optimizer(config, schedule)
  batches = input_pipeline.train_batches(
      train_src, config.batch_size, config.seed, jax.process_index(), jax.process_count(),
      num_workers=config.data.get("num_workers", 0), tokenizer=tokenizer)
  init, init_rng, abstract, state_sharding, train_step = build_step(
      config, mesh, method, tx, train_src[0]["image"][None])
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep)
  saved_config = os.path.join(workdir, "config.json")
  if ckpt.latest_step() is not None and os.path.exists(saved_config):
    with open(saved_config) as f:
      config_check.check_resume(f.read(), config, saved_config)
  ts = ckpt.restore_latest(checkpoint.abstract_like(abstract, state_sharding))
  if jax.process_index() == 0:  # The run's config, for resuming, tools/export_pytorch.py.
    with open(saved_config + ".tmp", "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(saved_config + ".tmp", saved_config)  # Never a half-written config.json.
  if ts is None:
    # Read and checked before the first compile; applied to the fresh state.
    init_from = config.get("init_from")
    pretrained = (initialize.load(init_from, abstract, config) if init_from and (
        init_from.workdir or init_from.get("torch", {}).get("path")) else {})
    ts = jax.jit(init, out_shardings=state_sharding)(init_rng)
    if pretrained:
      ts = initialize.apply(ts, pretrained, state_sharding)
      logging.info("Initialised %d arrays from %s.", len(pretrained),
                   init_from.workdir or init_from.torch.path)
  else:
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(ts["step"]))
  step = int(ts["step"])

  # Rows past the restored step belong to a run that died before its next checkpoint.
  logger = metrics.MetricLogger(workdir, total_steps, resume_step=step)
  jitted = {name: jax.jit(getattr(method, name), out_shardings=sharding.batch_sharding(mesh))
            for name in ("features", "encode_images", "encode_texts") if hasattr(method, name)}
  sources = (train_src, test_src)
  evaluate_now = lambda: run_evaluators(evaluators, method, jitted, ts, sources, num_classes,
                                        mesh, config)
  n_params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
  logging.info("%s: %d steps of global batch %d on mesh %s, %.2fM parameters; train state "
               "%.1f MiB per device.", config.method, total_steps, config.batch_size,
               dict(mesh.shape), n_params / 1e6,
               sharding.bytes_per_device(abstract, state_sharding) / 2**20)

  results = {}
  if step == 0 and config.eval.get("at_start"):
    results["init"] = evaluate_now()
    logger.write(0, {k.replace("eval/", "eval_init/"): v for k, v in results["init"].items()})
    logging.info("Random-init evaluation: %s", results["init"])

  history, compiled, pending, preempted = [], False, [], None
  policy = config.get("nonfinite", "error")
  batch_iter = batches.iterate(step) if step < total_steps else iter(())
  for local_batch in batch_iter:
    ts, step_metrics = train_step(ts, sharding.global_batch(local_batch, mesh))
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
      logger.progress(step, {**metrics.average(history), "lr": float(lr_fn(step - 1)), **extra},
                      config.batch_size)
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
