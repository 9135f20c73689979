"""Evaluators by name (`config.eval.evaluators`), each with its own config section.

An evaluator is a function (context, cfg) -> {metric name: value} registered with
`@evaluator(name, settings=..., data=...)`: `settings` declares `config.eval.<name>`, `data`
the kinds of method it serves (input_pipeline/sources.py), `check(run)` what it needs beyond
that (class names, prompt templates). The Context runs the frozen model over the splits and
keeps what it computed, so evaluators that read the same features compute them once.
"""
import dataclasses
from typing import Callable

import jax

from big_contrast import registry
from big_contrast import settings
from big_contrast.evaluate import features
from input_pipeline import sources

EVALUATORS = registry.Registry("evaluator", "config.eval.evaluators")


@dataclasses.dataclass(frozen=True)
class Evaluator:
  fn: Callable                    # (Context, config.eval.<name>) -> {metric: value}
  settings: dict                  # declaration of config.eval.<name>
  data: tuple                     # method data kinds it serves
  check: Callable | None = None   # run -> error text or None


def evaluator(name, settings=None, data=(sources.IMAGES, sources.IMAGE_TEXT), check=None):
  """Registers the decorated function as evaluator `name`."""
  def wrap(fn):
    EVALUATORS.register(name, Evaluator(fn, settings or {}, tuple(data), check))
    return fn
  return wrap


def needs_labels(run):
  """The check of evaluators that classify: the run's data must have classes."""
  if not run.num_classes:
    return (f"config.eval.evaluators {list(names(run.config))} classify, and "
            f"config.data.name={run.config.data.name!r} has no class labels (captions only): "
            "evaluate with ('retrieval',), or train on labelled data.")
  return None


def _serves(kind):
  return [n for n, e in EVALUATORS.items() if kind in e.data]


def eval_settings(kind: str) -> dict:
  """The declaration of `config.eval` for a method trained on data of `kind`."""
  return dict(
      every_steps=settings.integer(0, low=0), at_start=settings.boolean(False),
      batch_size=settings.integer(0, low=0),   # 0: use config.batch_size
      evaluators=("knn", "linear_probe"),
      **{n: EVALUATORS.get(n).settings for n in _serves(kind) if EVALUATORS.get(n).settings})


def names(config) -> tuple:
  return tuple(config.eval.get("evaluators", ()))


def check(run):
  """Fails before any compile on evaluators that are unknown or that the run cannot serve."""
  chosen = names(run.config)
  for name in chosen:
    EVALUATORS.get(name)
  kind = run.method.data
  unable = [n for n in chosen if kind not in EVALUATORS.get(n).data]
  if unable:
    able = [m for m in _serves(sources.IMAGE_TEXT) if m not in _serves(sources.IMAGES)]
    raise ValueError(f"config.eval.evaluators {unable} need an image-text method, not "
                     f"config.method={run.config.method!r}; its data serves "
                     f"{_serves(kind)} (image-text methods add {able}).")
  for name in chosen:
    ev = EVALUATORS.get(name)
    problem = ev.check(run) if ev.check else None
    if problem:
      raise ValueError(problem)


class Context:
  """One evaluation of train state `ts`: the frozen model over the run's splits, memoised."""

  def __init__(self, run, ts):
    self.run, self.ts = run, ts
    self.config = run.config
    self.train_source, self.test_source = run.sources
    self.num_classes = run.num_classes
    self.tokenizer = run.tokenizer
    self._memo = {}

  def _once(self, key, compute):
    if key not in self._memo:
      self._memo[key] = compute()
    return self._memo[key]

  def bank(self, encoder: str, source, key="image", tokenize=True) -> features.Bank:
    """The method's jitted `encoder` over one pass of `source`, kept sharded on the devices;
    the captions of the run's image-text sources are tokenized, other sources bring tokens."""
    fn = self.run.encoder(encoder)
    bound = lambda x: fn(self.ts["params"], self.ts["state"], x)
    batch_size = self.config.eval.get("batch_size") or self.config.batch_size
    return features.bank(bound, source, self.run.mesh, batch_size, key=key,
                         tokenizer=self.tokenizer if tokenize else None)

  def extract(self, encoder: str, source, key="image", tokenize=True):
    """(outputs, labels) as numpy arrays on every host: for small splits."""
    return self.bank(encoder, source, key, tokenize).gather()

  def features(self, split: str) -> features.Bank:
    """The backbone features of split "train" or "test", sharded on the devices."""
    source = self.train_source if split == "train" else self.test_source
    return self._once(("features", split), lambda: self.bank("features", source))

  def image_embeddings(self):
    """(joint-space image embeddings, labels) of the test split."""
    return self._once("images", lambda: self.extract("encode_images", self.test_source))

  def text_embeddings(self, source=None):
    """(joint-space text embeddings, labels) of `source` (default: the test split's captions)."""
    if source is None:
      return self._once("texts", lambda: self.extract("encode_texts", self.test_source, "text"))
    return self.extract("encode_texts", source, "text", tokenize=False)


def evaluate(run, ts) -> dict:
  """{"eval/<metric>": float} of every evaluator in `config.eval.evaluators`."""
  ctx = Context(run, ts)
  out = {}
  for name in names(run.config):
    cfg = run.config.eval.get(name)
    out.update({f"eval/{k}": float(v) for k, v in EVALUATORS.get(name).fn(ctx, cfg).items()})
  return out


def random_key():
  """The fixed key of evaluators that draw (the linear probe's batches): evaluations of the
  same state agree."""
  return jax.random.PRNGKey(0)
