"""Image-text pretraining with two towers: CLIP (softmax), SigLIP (sigmoid) and LiT.

  config.method = "clip"    softmax CLIP loss (losses.softmax_clip)
                  "siglip"  sigmoid loss; config.loss.impl = "full" (losses.sigmoid_clip) or
                            "ring" (losses.sigmoid_clip_ring over the run's mesh, b×b logits
                            per device)
LiT (Zhai et al. 2022, arXiv:2111.07991) is either of them with a locked tower:
`config.optimizer.frozen` regexes that cover every parameter of a tower (e.g.
"image/.*") lock it — no gradient is computed for it (the loop stops them), it
gets no optimizer state and stays bit-identical — and a locked tower runs in
inference mode (BatchNorm statistics frozen too). `config.init_from` loads it
from a checkpoint of this project (big_contrast/init_from.py).

Batches carry "image" (uint8) and "text" (token ids of `config.text.tokenizer`,
made on the host by the input pipeline; the run passes the same tokenizer in).
"""
import math

import jax
import jax.numpy as jnp

from big_contrast import losses
from big_contrast import models
from big_contrast import optim
from big_contrast import settings
from big_contrast import sharding
from big_contrast.methods import base
from big_contrast.models.two_tower import TwoTower
from input_pipeline import sources
from input_pipeline import tokenizers

TOWERS = ("image", "text")


class ImageText(base.EmbeddingMethod):
  """The two-tower methods; subclasses say which loss the joint embeddings get."""
  data = sources.IMAGE_TEXT
  export = "two_tower"
  sigmoid = False   # Whether the model has SigLIP's learned logit bias.

  @classmethod
  def settings(cls):
    return dict(base.view_settings(1, choices=(1,)), model=models.two_tower_settings(),
                text=dict(tokenizer=tokenizers.SETTINGS))

  def __init__(self, config, schedule, mesh=None, tokenizer=None):
    super().__init__(config, schedule, mesh, tokenizer)
    if tokenizer is None:
      raise ValueError(f"{self.name} needs the run's tokenizer (run.build_method makes it "
                       "from config.text.tokenizer).")
    self.model = models.two_tower(config.model, tokenizer.vocab_size, tokenizer.pad_id,
                                  tokenizer.length, bias=self.sigmoid)
    self.locked = self._locked_towers(config.optimizer.get("frozen", ()))

  def _dummy_tokens(self):
    return jnp.zeros((1, self.tokenizer.length), jnp.int32)

  def _locked_towers(self, patterns):
    """{tower: True} for towers whose every parameter matches a frozen regex."""
    size = self.config.augment.crop_size
    shapes = jax.eval_shape(
        self.model.init, jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32), self._dummy_tokens())["params"]
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(shapes)]
    return {t: all(optim.is_frozen(p, patterns) for p in paths
                   if sharding.path_name(p).startswith(t + "/")) for t in TOWERS}

  def init(self, rng, images):
    variables = dict(self.model.init(rng, self.eval_view(images), self._dummy_tokens(),
                                     train_image=False, train_text=False))
    params = variables.pop("params")
    return params, {"model": variables}

  def inputs(self, batch, rng):
    (images,), _ = self.views(rng, batch)
    return {"image": images, "text": batch["text"]}

  def embed(self, params, state, inputs):
    """((x, y), new state): l2-normalised image and text embeddings [N, E]."""
    (x, y), model_state = self.model.apply(
        {"params": params, **state["model"]}, inputs["image"], inputs["text"],
        train_image=not self.locked["image"], train_text=not self.locked["text"],
        mutable=list(state["model"]), method=TwoTower.embed)
    return (x, y), {**state, "model": dict(model_state)}

  def scale_and_bias(self, params):
    return self.model.apply({"params": params}, method=TwoTower.scale_and_bias)

  def _apply(self, params, state, x, method):
    return self.model.apply({"params": params, **state["model"]}, x, method=method)

  def features(self, params, state, images):
    """The image tower's features (k-NN, linear probe)."""
    return self._apply(params, state, self.eval_view(images), TwoTower.image_features)

  def encode_images(self, params, state, images):
    """l2-normalised image embeddings in the joint space (zero-shot, retrieval)."""
    return self._apply(params, state, self.eval_view(images),
                       lambda m, x: m.encode_image(x, train=False))

  def encode_texts(self, params, state, tokens):
    """l2-normalised text embeddings in the joint space."""
    return self._apply(params, state, tokens, lambda m, x: m.encode_text(x, train=False))


@base.register("clip")
class CLIP(ImageText):
  """Softmax CLIP (Radford et al. 2021, arXiv:2103.00020). The logit scale t is clipped to
  `config.loss.max_scale` (100, the paper's "to prevent scaling the logits by more than
  100", as open_clip does after each step; 0: no limit)."""

  @classmethod
  def settings(cls):
    return dict(super().settings(), loss=dict(max_scale=settings.number(100.0, low=0)))

  def __init__(self, config, schedule, mesh=None, tokenizer=None):
    super().__init__(config, schedule, mesh, tokenizer)
    limit, init = config.loss.get("max_scale", 100.0), config.model.temperature_init
    if limit and not 1 <= init <= limit:
      raise ValueError(f"config.model.temperature_init={init:g}: CLIP's logit scale starts "
                       f"within [1, config.loss.max_scale={limit:g}]; it is clipped to that "
                       "range after every step.")

  def after_update(self, params, state, step):
    limit = self.config.loss.get("max_scale", 100.0)
    if not limit:
      return params, state
    # t' = log t in [0, log max_scale], as open_clip clamps its logit_scale.
    return {**params, "t": jnp.clip(params["t"], 0.0, math.log(limit)).astype(
        params["t"].dtype)}, state

  def embedding_loss(self, params, embeddings, batch):
    x, y = embeddings
    t, _ = self.scale_and_bias(params)
    return losses.softmax_clip(x, y, t), {"t": t}


@base.register("siglip")
class SigLIP(ImageText):
  """Sigmoid loss (Zhai et al. 2023, arXiv:2303.15343), in full or as the chunked ring."""
  sigmoid = True

  @classmethod
  def settings(cls):
    # impl: the loss as "full" N×N logits or the "ring" of b×b blocks (b = N / devices).
    return dict(super().settings(), loss=dict(impl=settings.choice("full", ("full", "ring"))))

  def embedding_loss(self, params, embeddings, batch):
    x, y = embeddings
    t, b = self.scale_and_bias(params)
    if self.config.loss.impl == "ring":
      if self.mesh is None:
        raise ValueError("config.loss.impl='ring' lays the loss out over the run's mesh; "
                         "build the method with one (run.setup does).")
      return losses.sigmoid_clip_ring(x, y, t, b, self.mesh), {"t": t, "b": b}
    return losses.sigmoid_clip(x, y, t, b), {"t": t, "b": b}
