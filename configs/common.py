"""What recipes share; a recipe starts from its method's declared defaults and overrides only
what it changes (big_contrast/run_config.py assembles the defaults from the declarations)."""
import ml_collections

from big_contrast import models
from big_contrast import run_config
from input_pipeline import image_text

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def override(config: ml_collections.ConfigDict, dotted: dict) -> ml_collections.ConfigDict:
  """Sets {"a.b.c": value, ...} on `config` in place and returns it (tests, tools).

  A missing section is created: whether the key belongs is run_config.check's to say.
  """
  for key, value in dotted.items():
    *parents, leaf = key.split(".")
    target = config
    for p in parents:
      if p not in target:
        target[p] = ml_collections.ConfigDict()
      target = target[p]
    target[leaf] = value
  return config


def model_config(c: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A `config.model` for another model than the declared default's backbone (a ViT where it
  is a ResNet-50; a two-tower's own towers): `fields`, and every other declared key of
  `c.model` (dtype, remat, scan_layers, block_chunks, head and predictor widths, ...) that
  `fields` leaves out, so that `--config.model.KEY` overrides them as in any recipe."""
  kept = {k: v for k, v in c.model.items()
          if k not in models.BACKBONE_SETTINGS and not isinstance(v, ml_collections.ConfigDict)}
  return ml_collections.ConfigDict({**kept, **fields})


def base_config(method: str = "simclr") -> ml_collections.ConfigDict:
  """The declared defaults of `method`: every key its run reads, nothing else."""
  return run_config.defaults(method)


def digits_config(method: str = "simclr") -> ml_collections.ConfigDict:
  """What every *_digits recipe shares: data, a small ResNet-18, AdamW, evaluation.

  Sized to finish in about 3 minutes on a 2-core CPU.
  """
  c = base_config(method)
  c.batch_size = 256
  c.num_epochs = 30.0
  c.log_every_steps = 10
  c.data.image_size = 16
  c.data.mean, c.data.std = (0.5,) * 3, (0.5,) * 3
  c.augment.crop_size = 16
  c.augment.crop_scale = (0.3, 1.0)    # Digits are tiny; 8% crops erase the glyph.
  c.augment.flip_prob = 0.0            # Mirrored digits are other glyphs (2/5, 3/E).
  if "multicrop" in c:
    c.multicrop.update(crop_size=8, crop_scale=(0.1, 0.3))
  if c.model.get("name") != "two_tower":
    c.model.update(depth=18, width=16, stem="cifar", head_hidden_dims=(256,), head_dim=64)
    if "predictor_hidden_dims" in c.model:
      c.model.predictor_hidden_dims = (256,)
  if "temperature" in c.get("loss", {}):
    c.loss.temperature = 0.2
  c.optimizer.update(name="adamw", lr=2e-3, lr_batch_scale=0, weight_decay=1e-4,
                     warmup_epochs=2.0)
  c.checkpoint.every_steps = 50
  c.eval.update(at_start=True, every_steps=0)
  c.eval.linear_probe.update(epochs=100, batch_size=256)
  return c


def image_text_digits_config(method: str) -> ml_collections.ConfigDict:
  """What clip_digits / siglip_digits / lit_digits share: digits with generated captions,
  a small ViT image tower, a byte-level text transformer, zero-shot + retrieval evaluation."""
  c = digits_config(method)
  c.num_epochs = 90.0          # One cheap view per pair: 505 steps fit the few minutes.
  c.data.name = "digits_captions"
  # CLIP-style light augmentation: mild crops, no colour changes on grey digits.
  c.augment.update(crop_scale=(0.6, 1.0), color_jitter_prob=0.0, grayscale_prob=0.0,
                   blur_prob=0.0, solarize_prob=0.0)
  c.text.tokenizer.update(name="bytes", length=48)
  # dtype, param_dtype and remat apply to both towers.
  c.model = model_config(
      c, name="two_tower", dtype="float32", param_dtype="float32", remat="none", embed_dim=64,
      image=ml_collections.ConfigDict(dict(name="vit", variant="Ti/4", width=64, depth=4,
                                           heads=4, pool="map", posemb="sincos2d")),
      text=ml_collections.ConfigDict(dict(width=64, depth=2, heads=4, causal=False,
                                          pool="last")),
      temperature_init=1 / 0.07, bias_init=-10.0)
  c.optimizer.update(name="adamw", lr=1e-3, weight_decay=1e-4, b2=0.95, grad_clip_norm=1.0,
                     warmup_epochs=2.0)
  c.eval.update(evaluators=("zero_shot", "retrieval", "knn"))
  c.eval.zero_shot.templates = image_text.prompt_templates()
  return c


def imagenet_config(method: str = "simclr") -> ml_collections.ConfigDict:
  """What every *_imagenet recipe shares: ImageNet-1k at full resolution, ResNet-50, bf16.

  `--config.data.path` names ImageNet prepared by `python -m tools.prepare_data
  --format=image_folder --input=/data/imagenet --out=DIR` (train/ and val/ in class folders);
  `--config.data.name=image_folder` reads the tree in place instead, and `name=tfds
  tfds_name=imagenet2012 test_split=validation data_dir=...` a tfds array_record build.
  Training views are cropped on the host from the full-resolution image; evaluation resizes
  the short side to 256 and the device takes the centre 224.
  """
  c = base_config(method)
  c.log_every_steps = 100
  c.data.update(name="prepared", train_split="train", test_split="val", image_size=256,
                num_workers=16)
  c.augment.update(crop_size=224)
  if "multicrop" in c:
    c.multicrop.update(crop_size=96, crop_scale=(0.05, 0.14))
  if c.model.get("name") != "two_tower":
    c.model.update(name="resnet", depth=50, stem="imagenet", dtype="bfloat16")
  c.checkpoint.every_steps = 2500
  c.eval.update(every_steps=0, batch_size=1024)
  c.eval.linear_probe.update(epochs=90, batch_size=4096)
  return c
