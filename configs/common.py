"""Defaults shared by every recipe; a recipe overrides only what it changes."""
import ml_collections

from big_contrast import augment
from input_pipeline import image_text

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def override(config: ml_collections.ConfigDict, dotted: dict) -> ml_collections.ConfigDict:
  """Sets {"a.b.c": value, ...} on `config` in place and returns it (tests, tools)."""
  for key, value in dotted.items():
    *parents, leaf = key.split(".")
    target = config
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "simclr"
  c.num_views = 2              # Large views per image.
  # SwAV's multi-crop: extra small views of every image (0: none).
  c.multicrop = ml_collections.ConfigDict(dict(num_small=0, crop_size=96,
                                               crop_scale=(0.05, 0.14)))
  c.seed = 0
  c.batch_size = 256
  c.num_epochs = 100.0
  c.total_steps = 0            # > 0 overrides num_epochs.
  # > 1: GradCache (big_contrast/grad_cache.py): the full batch's loss and gradient,
  # computed in this many micro-batches to bound activation memory.
  c.micro_batches = 1
  c.log_every_steps = 50
  # A step with a non-finite loss, gradient or metric is never applied or saved; then
  # "error": stop naming the step and metric; "skip": go on from the previous state, counted.
  c.nonfinite = "error"
  # Mesh axes and sizes; -1 takes all remaining devices. The batch is split
  # over "data" and "fsdp"; "tensor" splits transformer blocks (README "Scaling out").
  c.mesh = (("data", -1),)
  # Parameters and optimizer state are replicated unless a rule matches their path:
  # rules: (regex, spec) pairs, spec a PartitionSpec tuple or an axis name for "the largest
  # dimension it divides" (FSDP), or preset names: "fsdp", "transformer_tp" (sharding.PRESETS).
  # Leaves under min_size elements stay replicated.
  c.sharding = ml_collections.ConfigDict(dict(rules=(), min_size=2**14))

  c.data = ml_collections.ConfigDict(dict(
      name="digits",           # digits | tfds
      tfds_name="", data_dir="", train_split="train", test_split="test",
      image_size=32, num_workers=0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
      # Feature names of image-text records (name="tfds_captions"); "" = no labels.
      image_key="image", text_key="caption", label_key=""))

  c.augment = augment.default_config()   # SimCLR's augmentation.
  c.augment_views = ()         # Per-view overrides of `augment`, e.g. ({"blur_prob": 1.0}, ...).

  # dtype: compute, param_dtype: storage (float32|bfloat16|float16); remat: none|full|dots.
  c.model = ml_collections.ConfigDict(dict(
      name="resnet", depth=50, width=64, stem="imagenet", dtype="float32", param_dtype="float32",
      remat="none", head_hidden_dims=(2048,), head_dim=128, head_bn=True, head_last_bn=False,
      predictor_hidden_dims=(4096,), predictor_last_bn=False))
  # InfoNCE family: positives "instance" (SimCLR) or "label" (SupCon); decoupled (DCL);
  # objective: the poly-view objective (method poly_view).
  # impl: the sigmoid image-text loss as "full" or chunked "ring" (method siglip).
  c.loss = ml_collections.ConfigDict(dict(temperature=0.1, positives="instance",
                                          decoupled=False, objective="geometric", impl="full"))
  # Image-text methods: the host-side tokenizer (input_pipeline.tokenizers).
  c.text = ml_collections.ConfigDict(dict(
      tokenizer=ml_collections.ConfigDict(dict(name="bytes", length=32, path=""))))
  # Load parts of the fresh model from a checkpoint of this project (big_contrast/initialize.py).
  # Or from PyTorch weights: torch.path (.safetensors/.pt), torch.library (torchvision, timm,
  # open_clip) and torch.model, the config key of their architecture (e.g. "model.image").
  c.init_from = ml_collections.ConfigDict(dict(
      workdir="", step=0, rules=(),
      torch=ml_collections.ConfigDict(dict(path="", library="", model="model"))))

  # Method sections; each method reads only its own.
  # bn_groups: shuffle-BN groups (see methods/moco.py); 1 = BatchNorm over the whole batch.
  c.moco = ml_collections.ConfigDict(dict(
      momentum=0.99, momentum_final=1.0, queue_size=0, predictor=True, symmetric=True,
      bn_groups=1))
  c.swav = ml_collections.ConfigDict(dict(
      num_prototypes=3000, epsilon=0.05, sinkhorn_iterations=3, queue_size=0,
      queue_start_epoch=15.0, freeze_prototypes_epochs=1.0))

  c.optimizer = ml_collections.ConfigDict(dict(
      name="lars", lr=0.3, lr_batch_scale=256, weight_decay=1e-6, momentum=0.9,
      warmup_epochs=10.0, min_lr_ratio=0.0, grad_clip_norm=0.0,
      frozen=()))             # Regexes of parameter paths that get no updates.

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3))
  c.eval = ml_collections.ConfigDict(dict(
      every_steps=0, at_start=False, batch_size=0,   # 0: use config.batch_size
      evaluators=("knn", "linear_probe"),            # + "zero_shot", "retrieval" (image-text)
      zero_shot_templates=(),                        # e.g. ("a photo of a {}.",)
      knn_k=20, knn_temperature=0.07,
      probe_epochs=90, probe_batch_size=1024, probe_lr=1e-2, probe_weight_decay=1e-4))
  return c


def digits_config() -> ml_collections.ConfigDict:
  """What every *_digits recipe shares: data, a small ResNet-18, AdamW, evaluation.

  Sized to finish in about 3 minutes on a 2-core CPU.
  """
  c = base_config()
  c.batch_size = 256
  c.num_epochs = 30.0
  c.log_every_steps = 10
  c.data.image_size = 16
  c.data.mean, c.data.std = (0.5,) * 3, (0.5,) * 3
  c.augment.crop_size = 16
  c.augment.crop_scale = (0.3, 1.0)    # Digits are tiny; 8% crops erase the glyph.
  c.augment.flip_prob = 0.0            # Mirrored digits are other glyphs (2/5, 3/E).
  c.multicrop.update(crop_size=8, crop_scale=(0.1, 0.3))
  c.model.update(depth=18, width=16, stem="cifar", head_hidden_dims=(256,), head_dim=64,
                 predictor_hidden_dims=(256,))
  c.loss.temperature = 0.2
  c.optimizer.update(name="adamw", lr=2e-3, lr_batch_scale=0, weight_decay=1e-4,
                     warmup_epochs=2.0)
  c.checkpoint.every_steps = 50
  c.eval.update(at_start=True, every_steps=0, probe_epochs=100, probe_batch_size=256)
  return c


def image_text_digits_config(method: str) -> ml_collections.ConfigDict:
  """What clip_digits / siglip_digits / lit_digits share: digits with generated captions,
  a small ViT image tower, a byte-level text transformer, zero-shot + retrieval evaluation."""
  c = digits_config()
  c.method = method
  c.num_views = 1
  c.num_epochs = 90.0          # One cheap view per pair: 505 steps fit the few minutes.
  c.data.name = "digits_captions"
  # CLIP-style light augmentation: mild crops, no colour changes on grey digits.
  c.augment.update(crop_scale=(0.6, 1.0), color_jitter_prob=0.0, grayscale_prob=0.0,
                   blur_prob=0.0, solarize_prob=0.0)
  c.text.tokenizer.update(name="bytes", length=48)
  # dtype, param_dtype and remat (as in base_config) apply to both towers.
  c.model = ml_collections.ConfigDict(dict(
      name="two_tower", dtype="float32", param_dtype="float32", remat="none", embed_dim=64,
      image=ml_collections.ConfigDict(dict(name="vit", variant="Ti/4", width=64, depth=4,
                                           heads=4, pool="map", posemb="sincos2d")),
      text=ml_collections.ConfigDict(dict(width=64, depth=2, heads=4, causal=False,
                                          pool="last")),
      temperature_init=1 / 0.07, bias_init=-10.0))
  c.optimizer.update(name="adamw", lr=1e-3, weight_decay=1e-4, b2=0.95, grad_clip_norm=1.0,
                     warmup_epochs=2.0)
  c.eval.update(evaluators=("zero_shot", "retrieval", "knn"),
                zero_shot_templates=image_text.prompt_templates())
  return c


def imagenet_config() -> ml_collections.ConfigDict:
  """What every *_imagenet recipe shares: ImageNet-1k from tfds array_record, ResNet-50, bf16.

  Needs imagenet2012 prepared with `tfds build ... --file_format=array_record` (README) and
  `--config.data.data_dir`.
  """
  c = base_config()
  c.log_every_steps = 100
  c.data.update(name="tfds", tfds_name="imagenet2012", train_split="train",
                test_split="validation", image_size=256, num_workers=16)
  c.augment.update(crop_size=224)
  c.multicrop.update(crop_size=96, crop_scale=(0.05, 0.14))
  c.model.update(name="resnet", depth=50, stem="imagenet", dtype="bfloat16")
  c.checkpoint.every_steps = 2500
  c.eval.update(every_steps=0, batch_size=1024, probe_epochs=90, probe_batch_size=4096)
  return c
