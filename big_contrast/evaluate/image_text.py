"""Zero-shot classification and image-text retrieval from joint embeddings."""
import functools
import importlib.resources
import json

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np

from big_contrast import settings
from big_contrast.evaluate import base
from big_contrast.numerics import l2_normalize as _l2n
from big_contrast.numerics import top_k_hits
from input_pipeline import sources


def zero_shot_classifier(text_embeddings):
  """Class embeddings [C, D] from prompt embeddings [C, T, D] (C classes × T templates).

  As in CLIP: every prompt embedding is l2-normalised, the T of a class are
  averaged, and the mean is normalised again.
  """
  return _l2n(jnp.mean(_l2n(text_embeddings), axis=1))


@functools.partial(jax.jit, static_argnames=("ks",))
def zero_shot_accuracy(image_embeddings, classifier, labels, ks=(1,)):
  """{k: top-k accuracy} of classifying images [N, D] by cosine to class embeddings [C, D]."""
  hits = top_k_hits(_l2n(image_embeddings) @ classifier.T, labels, ks=ks)
  return {k: v / labels.shape[0] for k, v in hits.items()}


def _recall(scores, relevant, ks):
  """Fraction of queries (rows) with a relevant item among their top k, for each k.

  `relevant` [Q, M] marks the right answers; the rank of a query is the number
  of wrong items scored at least as high as its best relevant item (ties count
  against the model, so a constant embedding scores 0, not 1).
  """
  best = jnp.max(jnp.where(relevant, scores, -jnp.inf), axis=1, keepdims=True)
  rank = jnp.sum((scores >= best) & ~relevant, axis=1)
  return {k: jnp.mean(rank < k) for k in ks}


@functools.partial(jax.jit, static_argnames=("ks",))
def retrieval_recall(image_embeddings, text_embeddings, text_to_image, ks=(1, 5, 10)):
  """Recall@k for image→text and text→image retrieval (as reported for COCO / Flickr30k).

  Args:
    image_embeddings: [N, D].
    text_embeddings: [M, D]; an image may have several captions (M ≥ N).
    text_to_image: [M] index of the image each text describes.
    ks: the k of R@k.
  Returns:
    {"i2t_r@k": ..., "t2i_r@k": ...}: an image query is right if ANY of its
    captions is in the top k; a text query if its image is.
  """
  x, y = _l2n(image_embeddings), _l2n(text_embeddings)
  scores = x @ y.T                                                     # [N, M]
  pairs = jnp.arange(x.shape[0])[:, None] == text_to_image[None, :]    # [N, M]
  i2t = _recall(scores, pairs, ks)
  t2i = _recall(scores.T, pairs.T, ks)
  return {**{f"i2t_r@{k}": v for k, v in i2t.items()},
          **{f"t2i_r@{k}": v for k, v in t2i.items()}}


class PromptSource:
  """Random-access source of the zero-shot prompts: class c, template t -> its tokens."""

  def __init__(self, class_names, templates, tokenizer):
    self.items = [(c, t.format(name)) for c, name in enumerate(class_names) for t in templates]
    self.tokenizer = tokenizer

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    label, prompt = self.items[i]
    return {"text": self.tokenizer(prompt), "label": np.int32(label)}



CLIP_IMAGENET = "clip_imagenet"


@functools.cache
def clip_imagenet() -> dict:
  """CLIP's (Radford et al. 2021) ImageNet-1k class names, in class-index (synset) order, and
  its 80 prompt templates: {"classnames": [1000], "templates": [80], "source": ...}."""
  path = importlib.resources.files("big_contrast.evaluate") / "data" / "imagenet_zero_shot.json"
  return json.loads(path.read_text())


def _lists(cfg) -> tuple:
  """(class names, templates) that config.eval.zero_shot gives: its own tuples, else its
  preset's; () class names: the data's."""
  preset = clip_imagenet() if cfg.preset == CLIP_IMAGENET else {}
  return (tuple(cfg.class_names) or tuple(preset.get("classnames", ())),
          tuple(cfg.templates) or tuple(preset.get("templates", ())))


def _zero_shot_source(run):
  """The split zero-shot classifies: config.eval.zero_shot.data's, else the run's test split."""
  cfg = run.config.eval.zero_shot
  if not cfg.data.name:
    return run.sources[1]
  data = ml_collections.ConfigDict({**run.config.data.to_dict(), **cfg.data.to_dict()})
  return sources.open_split(data, cfg.data.split)


def _check_zero_shot(run):
  cfg = run.config.eval.zero_shot
  templates = _lists(cfg)[1]
  bad = [t for t in templates if t.count("{}") != 1]
  if bad:
    return (f"config.eval.zero_shot.templates {bad[:3]} must each hold one '{{}}' where the "
            "class name goes, e.g. 'a photo of a {}.'.")
  if not templates:
    return ("zero_shot evaluation needs config.eval.zero_shot.templates (e.g. ('a photo of a "
            f"{{}}.',)), or preset={CLIP_IMAGENET!r} for CLIP's 80 and ImageNet names.")
  try:
    classes = tuple(getattr(_zero_shot_source(run), "class_names", ()))
  except (ValueError, OSError) as e:
    return f"config.eval.zero_shot.data: {e}"
  if not classes:
    return ("zero_shot evaluation needs class names: the run's test data has none; set "
            "config.eval.zero_shot.data (a labelled set, e.g. name='prepared', path=IMAGENET) "
            "and class_names or preset.")
  names = _lists(cfg)[0]
  if names and len(names) != len(classes):
    return (f"config.eval.zero_shot gives {len(names)} class names and the zero-shot data has "
            f"{len(classes)} classes; give one name per class in label order (preset "
            f"{CLIP_IMAGENET!r}: ImageNet-1k's 1000).")
  return None


# preset CLIP_IMAGENET: CLIP's 1000 ImageNet class names and 80 templates, where class_names
# or templates are (). class_names (): else the data's own. data.name "": the run's own test
# split; else a labelled image set read like config.data (image_folder / prepared path, or
# tfds), e.g. ImageNet's validation split for a CLIP run trained on captions.
ZERO_SHOT = dict(preset=settings.choice("", ("", CLIP_IMAGENET)), templates=(), class_names=(),
                 data=dict(name="", path="", split="val", tfds_name="", data_dir=""))


@base.evaluator("zero_shot", settings=ZERO_SHOT, data=(sources.IMAGE_TEXT,),
                check=_check_zero_shot)
def zero_shot(ctx, cfg):
  """Zero-shot top-1 and top-5 (CLIP's protocol): each class's embedding is the mean of its
  prompts' (class name x every template), and an image takes the most similar class."""
  source = _zero_shot_source(ctx.run)
  if cfg.data.name:
    images, labels = ctx.extract("encode_images", source, tokenize=False)
  else:
    images, labels = ctx.image_embeddings()
  names, templates = _lists(cfg)
  names = names or tuple(source.class_names)
  texts, _ = ctx.text_embeddings(PromptSource(names, templates, ctx.tokenizer))
  classifier = zero_shot_classifier(texts.reshape(len(names), len(templates), -1))
  ks = (1, 5) if len(names) > 5 else (1,)
  return {f"zero_shot_top{k}": v for k, v in
          zero_shot_accuracy(images, classifier, labels, ks=ks).items()}


@base.evaluator("retrieval", data=(sources.IMAGE_TEXT,))
def retrieval(ctx, cfg):
  """Image->text and text->image R@1/5/10 over the test split's pairs."""
  del cfg
  images, _ = ctx.image_embeddings()
  texts, _ = ctx.text_embeddings()
  return retrieval_recall(images, texts, np.arange(len(texts)))
