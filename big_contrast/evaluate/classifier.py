"""Classifiers trained over augmented views of the training split, as the papers evaluate:

  linear_eval  a linear classifier on the frozen backbone (SimCLR, MoCo, SwAV, poly-view's
               "linear evaluation"), trained on random-resized-crop + flip views;
  finetune     the backbone and a linear classifier trained together on a class-balanced
               fraction of the labels (SimCLR's semi-supervised 1% / 10%) or on all of them.

Both train with the optimizer of `config.eval.<name>.optimizer` (big_contrast/optim.py: SGD
with Nesterov momentum, or LARS for large batches; lr per 256 examples) for `epochs` passes
over the (sub)set, then report top-1 and top-5 on the test split's evaluation view (the
host's resize of data.image_size, then a centre crop of augment.crop_size: 256 -> 224 on
ImageNet). The backbone runs as `Method.features` does, in inference mode: BatchNorm uses and
keeps its running statistics, also while fine-tuning.
"""
import concurrent.futures
import functools
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from big_contrast import augment
from big_contrast import optim
from big_contrast import settings
from big_contrast import sharding
from big_contrast.numerics import top_k_hits
from big_contrast.evaluate import base
from big_contrast.evaluate import features
from input_pipeline import decode
from input_pipeline import pipeline


def _optimizer(lr):
  """config.optimizer's declaration with the protocols' defaults: SGD, Nesterov, lr per 256."""
  return dict(optim.SETTINGS, name=settings.choice("sgd", optim.OPTIMIZERS),
              lr=settings.positive(lr), lr_batch_scale=settings.number(256, low=0),
              weight_decay=settings.number(0.0, low=0),
              warmup_epochs=settings.number(0.0, low=0), nesterov=settings.boolean(True))


_VIEW = dict(crop_scale=settings.interval((0.08, 1.0), 0.0, 1.0),
             flip_prob=settings.probability(0.5),
             batch_size=settings.integer(0, low=0),  # 0: config.eval.batch_size
             seed=settings.integer(0))


# SimCLR's protocols (Chen et al. 2020, appendix B.5 / B.6): Nesterov momentum 0.9, no weight
# decay, cosine decay without warmup; linear evaluation 90 epochs at lr 0.1 x B/256, fine-tuning
# 60 epochs on 1% and 30 on 10% of the labels at lr 0.05 x B/256.
# standardize: features minus the training split's mean, over its std (of the evaluation
# view), before the classifier: a BatchNorm without affine parameters with fixed statistics, as
# MAE's linear probing places one; off in SimCLR's and MoCo's protocols.
LINEAR_EVAL = dict(epochs=settings.positive(90.0), optimizer=_optimizer(0.1),
                   standardize=settings.boolean(False), **_VIEW)
FINETUNE = dict(label_fractions=settings.numbers((0.01, 0.1), low=0, high=1, low_open=True,
                                                 hint="e.g. (0.01, 0.1), or (1.0,) for all"),
                epochs=settings.numbers((60.0, 30.0), low=0, low_open=True,
                                        hint="one number of epochs per label fraction"),
                optimizer=_optimizer(0.05), **_VIEW)


def labels_of(source) -> np.ndarray:
  """The label of every example: listed by the source (digits, an ImageFolder, the sidecars of
  prepared data), else read record by record, in parallel, without decoding images where the
  source allows (data prepared before sidecars held labels); a tfds source decodes each."""
  for holder in (source, getattr(source, "reader", None)):
    if getattr(holder, "labels", None) is not None:
      return np.asarray(holder.labels)
  reader = getattr(source, "reader", source)  # Encoded records: the label, not the image.
  started = time.time()
  with concurrent.futures.ThreadPoolExecutor(32) as pool:  # Reads wait on storage.
    labels = np.fromiter(pool.map(lambda i: int(reader[i]["label"]), range(len(reader))),
                         np.int64, len(reader))
  logging.info("Read the %d training labels in %.0f s (for the label subsets).", len(labels),
               time.time() - started)
  return labels


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a class-balanced `fraction` of the examples: from each class
  round(fraction × its size) of them (at least one), drawn with `seed`."""
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    take = max(1, int(round(fraction * len(members))))
    chosen.append(rng.choice(members, take, replace=False))
  return np.sort(np.concatenate(chosen))


class Labelled:
  """The images and labels of examples `indices` (default all) of `source`, with its host
  cropping (train_views) if it has one; captions are left out (they do not batch)."""
  KEYS = ("image", "views", "label")

  def __init__(self, source, indices=None):
    self.source = source
    self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    self.class_names = getattr(source, "class_names", ())
    if hasattr(source, "train_views"):
      self.train_views = lambda specs, i, rng: self._keep(
          source.train_views(specs, self.indices[i], rng))

  def _keep(self, example):
    return {k: v for k, v in example.items() if k in self.KEYS}

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self._keep(self.source[int(self.indices[i])])


def _views(batch, rng, crop_size, cfg):
  """uint8 views [B, S, S, 3]: random-resized crop (on the host for encoded sources, else
  here) and flip, nothing photometric; uint8 as torchvision's crops are, so the backbone
  sees them through the method's evaluation view (normalisation) unchanged in size."""
  aug = dict(augment.default_config(), crop_size=crop_size, crop_scale=tuple(cfg.crop_scale),
             flip_prob=cfg.flip_prob, color_jitter_prob=0.0, grayscale_prob=0.0,
             blur_prob=0.0, solarize_prob=0.0)
  host = "views" in batch
  x = augment.augment_batch(rng, batch["views"][:, 0] if host else batch["image"], aug,
                            crop=not host)
  return jnp.round(x * 255).astype(jnp.uint8)


def _step(method, tx, crop_size, cfg, finetune, frozen_params, state, scale, trained,
          opt_state, batch, rng):
  views = _views(batch, rng, crop_size, cfg)

  def loss_fn(trained):
    params = trained["backbone"] if finetune else frozen_params
    h = method.features(params, state, views)
    if not finetune:
      h = jax.lax.stop_gradient(h)
    logits = (h - scale[0]) / scale[1] @ trained["head"]["w"] + trained["head"]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  loss, grads = jax.value_and_grad(loss_fn)(trained)
  updates, opt_state = tx.update(grads, opt_state, trained)
  return optax.apply_updates(trained, updates), opt_state, loss


@jax.jit
def _hits(x, y, valid, scale, w, b):
  return top_k_hits((x.astype(jnp.float32) - scale[0]) / scale[1] @ w + b, y, valid)


def train_classifier(ctx, cfg, name: str, epochs: float, fraction: float = 1.0,
                     finetune: bool = False):
  """{"<name>_top1", "<name>_top5"} of a classifier trained on `fraction` of the labels;
  `cfg` is config.eval.finetune or config.eval.linear_eval."""
  section = "finetune" if finetune else "linear_eval"
  run, config = ctx.run, ctx.config
  method, mesh, ts = run.method, run.mesh, ctx.ts
  source = ctx.train_source
  source = Labelled(source, balanced_subset(labels_of(source), fraction, cfg.seed)
                    if fraction < 1.0 else None)
  batch_size = cfg.batch_size or config.eval.get("batch_size") or config.batch_size
  batch_size = min(batch_size, len(source) - len(source) % sharding.num_batch_shards(mesh))
  sharding.check_batch_size(batch_size, mesh, f"config.eval.{section}.batch_size")
  steps = max(1, int(round(epochs * len(source) / batch_size)))
  tx, lr_fn = optim.make(cfg.optimizer, batch_size, steps,
                         int(round(cfg.optimizer.warmup_epochs * len(source) / batch_size)))
  crop = config.augment.crop_size
  dim = jax.eval_shape(method.features, ts["params"], ts["state"],
                       jax.ShapeDtypeStruct((1, crop, crop, 3), jnp.uint8)).shape[-1]
  rep = sharding.replicated(mesh)
  # N(0, 0.01) weights and zero bias, as SimCLR's and MoCo's classifiers start.
  head = {"w": 0.01 * jax.random.normal(jax.random.PRNGKey(cfg.seed), (dim, ctx.num_classes)),
          "b": jnp.zeros((ctx.num_classes,))}
  # Fine-tuning starts from a copy of the parameters: the run's own state stays untouched.
  # (copied: device_put could hand back the very arrays, and the step donates them).
  trained = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings={
      "head": {"w": rep, "b": rep},
      **({"backbone": run.state_sharding["params"]} if finetune else {})})(
          {"head": head, **({"backbone": ts["params"]} if finetune else {})})
  opt_state = jax.jit(tx.init)(trained)
  scale = (jax.jit(features.standard_scale)(ctx.features("train").x, ctx.features("train").valid)
           if cfg.get("standardize") else (jnp.zeros(dim), jnp.ones(dim)))
  step = jax.jit(functools.partial(_step, method, tx, crop, cfg, finetune),
                 donate_argnums=(3, 4))
  spec = decode.ViewSpec(crop, tuple(cfg.crop_scale))
  batches = pipeline.train_batches(source, batch_size, config.seed + cfg.seed + 1,
                                   jax.process_index(), jax.process_count(),
                                   config.data.get("num_workers", 0), views=([spec], []))
  rng = jax.random.PRNGKey(cfg.seed)
  logging.info("%s: %d steps of batch %d over %d examples (%s backbone).", name, steps,
               batch_size, len(source), "fine-tuned" if finetune else "frozen")
  iterator = batches.iterate(0)
  for i in range(steps):
    batch = sharding.global_batch(next(iterator), mesh)
    trained, opt_state, loss = step(None if finetune else ts["params"], ts["state"], scale,
                                    trained, opt_state, batch, jax.random.fold_in(rng, i))
    if (i + 1) % max(1, steps // 10) == 0 or i + 1 == steps:
      logging.info("%s: step %d/%d  loss=%.4g  lr=%.4g", name, i + 1, steps, float(loss),
                   float(lr_fn(i)))
  getattr(iterator, "close", lambda: None)()
  if finetune:  # The test split through the fine-tuned backbone.
    fn = run.encoder("features")
    test = features.bank(lambda x: fn(trained["backbone"], ts["state"], x),
                         Labelled(ctx.test_source),
                         mesh, config.eval.get("batch_size") or config.batch_size)
  else:
    test = ctx.features("test")
  hits = _hits(test.x, test.y, test.valid, scale, trained["head"]["w"], trained["head"]["b"])
  return {f"{name}_top{k}": float(v) / len(test) for k, v in hits.items()}


def _check(section):
  """The check of evaluator `section`: labels, and a batch the mesh can split."""
  def check(run):
    cfg = run.config.eval[section]
    if cfg.batch_size:
      try:
        sharding.check_batch_size(cfg.batch_size, run.mesh, f"config.eval.{section}.batch_size")
      except ValueError as e:
        return str(e)
    if section == "finetune" and len(cfg.epochs) != len(cfg.label_fractions):
      return (f"config.eval.finetune.epochs={tuple(cfg.epochs)} must give one number of "
              f"epochs per label fraction {tuple(cfg.label_fractions)}.")
    return base.needs_labels(run)
  return check


@base.evaluator("linear_eval", settings=LINEAR_EVAL, check=_check("linear_eval"))
def linear_eval(ctx, cfg):
  """Linear evaluation: a linear classifier on the frozen backbone over augmented views."""
  return train_classifier(ctx, cfg, "linear_eval", cfg.epochs)


@base.evaluator("finetune", settings=FINETUNE, check=_check("finetune"))
def finetune(ctx, cfg):
  """Fine-tuning of the whole backbone on each label fraction: finetune_<pct>pct_top1/5."""
  out = {}
  for fraction, epochs in zip(cfg.label_fractions, cfg.epochs):
    out.update(train_classifier(ctx, cfg, f"finetune_{fraction * 100:g}pct", epochs, fraction,
                                finetune=True))
  return out
