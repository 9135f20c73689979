"""THE training loop: train_and_evaluate(config, workdir). Nothing else trains.

It knows nothing about any method: a Method (methods/base.py) turns a batch
into a loss; this file shards, steps, logs, evaluates and checkpoints.
"""
import functools
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import optax

from big_contrast import checkpoint
from big_contrast import evaluate
from big_contrast import methods
from big_contrast import metrics
from big_contrast import optim
from big_contrast import sharding
import input_pipeline


def _train_step(method, tx, ts, batch):
  # The step's randomness depends only on (seed, step): resuming is exact.
  rng = jax.random.fold_in(ts["rng"], ts["step"])

  def loss_fn(params):
    return method.loss(params, ts["state"], batch, rng, ts["step"])

  (loss, (state, step_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts["params"])
  updates, opt_state = tx.update(grads, ts["opt_state"], ts["params"])
  params = optax.apply_updates(ts["params"], updates)
  params, state = method.after_update(params, state, ts["step"])
  step_metrics = {**step_metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
  return dict(ts, step=ts["step"] + 1, params=params, state=state, opt_state=opt_state), step_metrics


def _schedule(config, train_size) -> methods.Schedule:
  # The data stream drops nothing at epoch ends, so an epoch is train_size/batch_size steps.
  steps_per_epoch = train_size / config.batch_size
  total = config.get("total_steps") or int(round(config.num_epochs * steps_per_epoch))
  return methods.Schedule(total_steps=total, steps_per_epoch=steps_per_epoch)


def evaluate_features(features_fn, ts, sources, num_classes, mesh, config) -> dict:
  """k-NN and linear-probe top-1 of the frozen backbone on the test split.

  `features_fn(params, state, images)` is the method's jitted feature extractor.
  """
  ev = config.eval
  batch_size = ev.get("batch_size") or config.batch_size
  features = functools.partial(features_fn, ts["params"], ts["state"])
  train_x, train_y = evaluate.extract(features, sources[0], mesh, batch_size)
  test_x, test_y = evaluate.extract(features, sources[1], mesh, batch_size)
  knn = evaluate.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=num_classes,
                              k=ev.knn_k, temperature=ev.knn_temperature)
  probe = evaluate.linear_probe_accuracy(
      train_x, train_y, test_x, test_y, jax.random.PRNGKey(0), num_classes=num_classes,
      epochs=ev.probe_epochs, batch_size=ev.probe_batch_size, lr=ev.probe_lr,
      weight_decay=ev.probe_weight_decay)
  return {"eval/knn_top1": float(knn), "eval/linear_probe_top1": float(probe)}


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config.method`, evaluating and checkpointing in `workdir`; returns final metrics."""
  start_time = time.time()
  # Everything that can be wrong with the config fails here, before any compile.
  optim.check(config.optimizer)
  methods.check(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(config.batch_size, mesh)
  if config.eval.get("batch_size"):
    sharding.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
  train_src, test_src, num_classes = input_pipeline.get_sources(config.data)
  schedule = _schedule(config, len(train_src))
  total_steps = schedule.total_steps
  method = methods.get(config, schedule)
  warmup_steps = int(round(config.optimizer.get("warmup_epochs", 0) * schedule.steps_per_epoch))
  tx, lr_fn = optim.make(config.optimizer, config.batch_size, total_steps, warmup_steps)
  batches = input_pipeline.train_batches(
      train_src, config.batch_size, config.seed, jax.process_index(), jax.process_count(),
      num_workers=config.data.get("num_workers", 0))

  example = train_src[0]["image"][None]
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))

  def init(rng):
    params, state = method.init(rng, example)
    return dict(step=jnp.zeros((), jnp.int32), params=params, state=state,
                opt_state=tx.init(params), rng=train_rng)

  abstract = jax.eval_shape(init, init_rng)
  state_sharding = sharding.param_shardings(abstract, mesh, config.get("sharding_rules", ()))
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep)
  ts = ckpt.restore_latest(checkpoint.abstract_like(abstract, state_sharding))
  if ts is None:
    ts = jax.jit(init, out_shardings=state_sharding)(init_rng)
  else:
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(ts["step"]))
  step = int(ts["step"])

  train_step = jax.jit(functools.partial(_train_step, method, tx),
                       in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sharding, sharding.replicated(mesh)),
                       donate_argnums=0)
  # Rows past the restored step belong to a run that died before its next checkpoint.
  logger = metrics.MetricLogger(workdir, total_steps, resume_step=step)
  features_fn = jax.jit(method.features, out_shardings=sharding.batch_sharding(mesh))
  sources = (train_src, test_src)
  evaluate_now = lambda: evaluate_features(features_fn, ts, sources, num_classes, mesh, config)
  n_params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
  logging.info("%s: %d steps of global batch %d on mesh %s, %.2fM parameters.", config.method,
               total_steps, config.batch_size, dict(mesh.shape), n_params / 1e6)

  results = {}
  if step == 0 and config.eval.get("at_start"):
    results["init"] = evaluate_now()
    logger.write(0, {k.replace("eval/", "eval_init/"): v for k, v in results["init"].items()})
    logging.info("Random-init evaluation: %s", results["init"])

  history, compiled = [], False
  batch_iter = batches.iterate(step) if step < total_steps else iter(())
  for local_batch in batch_iter:
    ts, step_metrics = train_step(ts, sharding.global_batch(local_batch, mesh))
    history.append(step_metrics)
    step += 1
    if not compiled:  # Keep compile time out of the first img/s and ETA.
      compiled = jax.block_until_ready(ts["step"]) is not None
      logger.restart_clock(step)
    last = step == total_steps
    if step % config.log_every_steps == 0 or last:
      logger.progress(step, {**metrics.average(history), "lr": float(lr_fn(step - 1))},
                      config.batch_size)
      history = []
    if (config.eval.every_steps and step % config.eval.every_steps == 0) or last:
      results["final"] = evaluate_now()
      logger.write(step, results["final"])
      logging.info("Evaluation at step %d: %s", step, results["final"])
      logger.restart_clock(step)
    if ckpt.maybe_save(step, ts, force=last):
      logger.restart_clock(step)
    if last:
      break
  getattr(batch_iter, "close", lambda: None)()  # Stops grain's worker processes.
  if "final" not in results:  # Nothing left to train: the run had already finished.
    results["final"] = evaluate_now()
  logger.close()
  ckpt.close()
  results.update(step=step, wall_time_s=time.time() - start_time,
                 checkpoint_dir=ckpt.directory, metrics_file=logger.jsonl_path,
                 tensorboard_dir=logger.tb_dir, train_state=ts)
  return results
