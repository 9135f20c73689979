"""One setup for every entry point: `setup(config) -> Run`.

The training loop (train.py), the benchmark (tools/benchmark.py) and any tool that compiles
the step build it here, so they run exactly the same thing: the config checked, the mesh made
once (from the devices given, default all) and passed down, the data sources and tokenizer,
the method, optimizer and schedule, the train state's abstract shapes and shardings, and the
jitted, sharded, donated train step. Nothing is compiled here, and everything that can be
wrong with the config fails here, before any compile.
"""
import dataclasses
import functools
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from big_contrast import evaluate
from big_contrast import grad_cache
from big_contrast import init_from
from big_contrast import methods
from big_contrast import optim
from big_contrast import run_config
from big_contrast import sharding
from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import tokenizers


def _train_step(method, tx, frozen, micro_batches, mesh, check_params, ts, batch):
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
  # config.nonfinite then does on the host. `check_params` (float16 storage, where an
  # optimizer's own arithmetic can underflow to 0/0) also checks the updated parameters;
  # elsewhere that check would hold the new state in a second buffer until it is done.
  checked = [*step_metrics.values(), *(jax.tree.leaves(params) if check_params else ())]
  finite = jnp.all(jnp.stack([jnp.isfinite(v).all() for v in checked]))
  updated = dict(params=params, state=state, opt_state=opt_state)
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated,
                      {k: ts[k] for k in updated})
  return dict(ts, **kept, step=ts["step"] + 1,
              nonfinite_steps=ts["nonfinite_steps"] + (~finite).astype(jnp.int32)), dict(
                  step_metrics, finite=finite)


def schedule(config, train_size: int) -> methods.Schedule:
  """The run's length. The data stream drops nothing at epoch ends, so an epoch is
  train_size / batch_size steps."""
  steps_per_epoch = train_size / config.batch_size
  total = config.get("total_steps") or int(round(config.num_epochs * steps_per_epoch))
  return methods.Schedule(total_steps=total, steps_per_epoch=steps_per_epoch)


def check_batch_size(config, train_size: int):
  """A batch larger than the training split holds the same image more than once: a positive
  among its own negatives."""
  if config.batch_size > train_size:
    raise ValueError(
        f"config.batch_size={config.batch_size}: must be <= the {train_size} training "
        f"examples of config.data.name={config.data.name!r}, or every batch repeats images; "
        "lower config.batch_size or train on a larger dataset.")


def batch_multiple(config, mesh) -> int:
  """What config.batch_size must be a multiple of: the data-parallel shards, each device's
  share split into micro-batches, and each of those into block slices."""
  return (sharding.num_batch_shards(mesh) * config.get("micro_batches", 1) *
          config.model.get("block_chunks", 1))


def check_block_chunks(config, mesh):
  """Fails before any compile when each device's (micro-)batch does not split into
  `config.model.block_chunks` slices (the shards and micro-batches are checked before)."""
  chunks = config.model.get("block_chunks", 1)
  per_device = config.batch_size // (sharding.num_batch_shards(mesh) *
                                     config.get("micro_batches", 1))
  if config.batch_size % batch_multiple(config, mesh):
    raise ValueError(f"config.model.block_chunks={chunks} must divide each device's batch of "
                     f"{per_device} (config.batch_size={config.batch_size} over "
                     f"{sharding.num_batch_shards(mesh)} data-parallel shards and "
                     f"config.micro_batches={config.get('micro_batches', 1)}); use a divisor "
                     f"of {per_device}.")


def build_method(config, sched: methods.Schedule, mesh=None, tokenizer=None) -> methods.Method:
  """`config.method` with, if it trains on text, `tokenizer` or that of
  `config.text.tokenizer`."""
  cls = methods.METHODS.get(config.method)
  if cls.data != sources.IMAGE_TEXT:
    tokenizer = None
  elif tokenizer is None:
    tokenizer = tokenizers.get_tokenizer(config.text.tokenizer)
  return cls(config, sched, mesh, tokenizer)


@dataclasses.dataclass
class Run:
  """Everything a run is made of; built by `setup`, nothing compiled yet."""
  config: Any
  mesh: jax.sharding.Mesh
  method: methods.Method
  schedule: methods.Schedule
  tx: optax.GradientTransformation
  lr_fn: Callable                 # step -> learning rate
  init: Callable                  # rng -> fresh train state
  init_rng: jax.Array
  abstract: dict                  # the train state's shapes and dtypes
  state_sharding: dict
  train_step: Callable            # jitted (train state, global batch) -> (train state, metrics)
  sources: tuple | None           # (train, test) sources; None when built without data
  num_classes: int | None
  _encoders: dict = dataclasses.field(default_factory=dict)

  @property
  def tokenizer(self):
    return self.method.tokenizer

  def init_state(self):
    """The fresh train state, placed with its shardings."""
    return jax.jit(self.init, out_shardings=self.state_sharding)(self.init_rng)

  def initial_state(self):
    """The state a run starts from: fresh, with what `config.init_from` names loaded into it
    (read and checked before the first compile)."""
    source = self.config.get("init_from")
    pretrained = (init_from.load(source, self.abstract, self.config)
                  if init_from.requested(source) else {})
    ts = self.init_state()
    if pretrained:
      ts = init_from.apply(ts, pretrained, self.state_sharding)
      logging.info("Initialised %d arrays from %s.", len(pretrained),
                   source.workdir or source.torch.path)
    return ts

  def train_batches(self):
    """This process's rows of every global batch (input_pipeline/pipeline.py)."""
    return pipeline.train_batches(
        self.sources[0], self.config.batch_size, self.config.seed, jax.process_index(),
        jax.process_count(), num_workers=self.config.data.get("num_workers", 0),
        tokenizer=self.tokenizer, views=self.method.view_specs())

  def global_batch(self, local_batch):
    return sharding.global_batch(local_batch, self.mesh)

  def batch_shapes(self) -> dict:
    """The global batch the step takes, as sharded ShapeDtypeStructs: views cropped on the
    host for sources of encoded images, else whole images the device crops; labels; token
    ids for methods that train on text."""
    n, config = self.config.batch_size, self.config
    rows = {"label": ((), np.int32)}
    if sources.SOURCES.get(config.data.name).host_crops:
      for name, specs in zip(("views", "small_views"), self.method.view_specs()):
        if specs:
          rows[name] = ((len(specs), specs[0].size, specs[0].size, 3), np.uint8)
    else:
      rows["image"] = ((config.data.image_size, config.data.image_size, 3), np.uint8)
    if self.tokenizer is not None:
      rows["text"] = ((self.tokenizer.length,), np.int32)
    batch_sharding = sharding.batch_sharding(self.mesh)
    return {k: jax.ShapeDtypeStruct((n, *shape), dtype, sharding=batch_sharding)
            for k, (shape, dtype) in rows.items()}

  def encoder(self, name: str):
    """The method's `name` ("features", "encode_images", "encode_texts"), jitted once."""
    if name not in self._encoders:
      self._encoders[name] = jax.jit(getattr(self.method, name),
                                     out_shardings=sharding.batch_sharding(self.mesh))
    return self._encoders[name]

  def evaluate(self, ts) -> dict:
    """{"eval/<metric>": value} of `config.eval.evaluators` on train state `ts`."""
    return evaluate.evaluate(self, ts)


def setup(config, devices=None, train_size: int | None = None, tokenizer=None) -> Run:
  """Checks `config` and builds its Run over `devices` (default: all of them).

  `train_size`: build without opening the data (benchmarks, ahead-of-time compilation); the
  schedule then assumes a training split of that many examples. `tokenizer`: instead of the
  one `config.text.tokenizer` names (ahead-of-time compilation without its vocabulary file).
  """
  run_config.check(config)
  cls = methods.METHODS.get(config.method)
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_rules(config.sharding.rules, mesh)
  sharding.check_batch_size(config.batch_size, mesh)
  if config.eval.get("batch_size"):
    sharding.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
  data = num_classes = None
  size = config.data.image_size
  example = np.zeros((1, size, size, 3), np.uint8)
  if train_size is None:
    sources.check(config.data, cls.data)
    train_src, test_src, num_classes = sources.get_sources(config.data)
    if not num_classes and cls.label_setting(config):
      raise ValueError(f"{cls.label_setting(config)} trains on class labels, and this "
                       f"config.data (name={config.data.name!r}) has none, captions only: "
                       "train on labelled data (for tfds_captions, name the label feature in "
                       "config.data.label_key), or use positives='instance' (SimCLR).")
    data, train_size = (train_src, test_src), len(train_src)
    check_batch_size(config, train_size)
    example = np.asarray(train_src[0]["image"])[None]
  sched = schedule(config, train_size)
  method = build_method(config, sched, mesh, tokenizer)
  grad_cache.check(config, method, mesh)
  check_block_chunks(config, mesh)
  warmup_steps = int(round(config.optimizer.get("warmup_epochs", 0) * sched.steps_per_epoch))
  if warmup_steps >= sched.total_steps > 1:
    logging.warning(
        "config.optimizer.warmup_epochs=%g is %d steps, and the run has %d: the learning rate "
        "warms up over the whole run, reaching its peak at the last step, and never decays. "
        "Lower config.optimizer.warmup_epochs for a short run.",
        config.optimizer.warmup_epochs, warmup_steps, sched.total_steps)
  tx, lr_fn = optim.make(config.optimizer, config.batch_size, sched.total_steps, warmup_steps,
                         method.param_starts())

  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))

  def init(rng):
    params, state = method.init(rng, example)
    return dict(step=jnp.zeros((), jnp.int32), params=params, state=state,
                opt_state=tx.init(params), rng=train_rng,
                nonfinite_steps=jnp.zeros((), jnp.int32))

  abstract = jax.eval_shape(init, init_rng)
  optim.check_frozen(config.optimizer.get("frozen", ()), abstract["params"])
  state_sharding = sharding.param_shardings(abstract, mesh, config.sharding.rules,
                                            config.sharding.min_size)
  step_fn = functools.partial(_train_step, method, tx, tuple(config.optimizer.get("frozen", ())),
                              config.get("micro_batches", 1), mesh,
                              config.model.get("param_dtype") == "float16")
  train_step = jax.jit(step_fn,
                       in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sharding, sharding.replicated(mesh)),
                       donate_argnums=0)
  run = Run(config=config, mesh=mesh, method=method, schedule=sched, tx=tx, lr_fn=lr_fn,
            init=init, init_rng=init_rng, abstract=abstract, state_sharding=state_sharding,
            train_step=train_step, sources=data, num_classes=num_classes)
  if data is not None:
    evaluate.check(run)
  return run
