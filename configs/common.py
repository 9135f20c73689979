"""Defaults shared by every recipe; a recipe overrides only what it changes."""
import ml_collections

from big_contrast import augment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "simclr"
  c.seed = 0
  c.batch_size = 256
  c.num_epochs = 100.0
  c.total_steps = 0            # > 0 overrides num_epochs.
  c.log_every_steps = 50
  # Mesh axes and sizes; -1 takes all remaining devices. The batch is split
  # over "data" and "fsdp"; parameters are replicated unless a rule matches.
  c.mesh = (("data", -1),)
  c.sharding_rules = ()        # ((regex on param path, partition spec tuple), ...)

  c.data = ml_collections.ConfigDict(dict(
      name="digits",           # digits | tfds
      tfds_name="", data_dir="", train_split="train", test_split="test",
      image_size=32, num_workers=0, mean=IMAGENET_MEAN, std=IMAGENET_STD))

  c.augment = augment.default_config()   # SimCLR's augmentation.

  c.model = ml_collections.ConfigDict(dict(
      name="resnet", depth=50, width=64, stem="imagenet", dtype="float32",
      head_hidden_dims=(2048,), head_dim=128))
  c.loss = ml_collections.ConfigDict(dict(temperature=0.1))

  c.optimizer = ml_collections.ConfigDict(dict(
      name="lars", lr=0.3, lr_batch_scale=256, weight_decay=1e-6, momentum=0.9,
      warmup_epochs=10.0, min_lr_ratio=0.0, grad_clip_norm=0.0))

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3))
  c.eval = ml_collections.ConfigDict(dict(
      every_steps=0, at_start=False, batch_size=0,   # 0: use config.batch_size
      knn_k=20, knn_temperature=0.07,
      probe_epochs=90, probe_batch_size=1024, probe_lr=1e-2, probe_weight_decay=1e-4))
  return c
