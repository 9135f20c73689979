"""MoCo v3, ViT-B/16 on ImageNet-1k (Chen, Xie, He 2021, arXiv:2104.02057).

  python -m big_contrast.main --config=configs/moco_v3_imagenet.py --workdir=runs/mocov3_in1k \
      --config.data.path=/data/imagenet_prepared

Batch 4096, AdamW lr 1.5e-4 × B/256, weight decay 0.1, 40 warmup epochs, 300 epochs,
τ = 0.2, momentum 0.99 -> 1 (cosine), 3-layer projector (4096, out 256, last BN), 2-layer
predictor, frozen random patch projection, BYOL's asymmetric views (blur 1.0 / 0.1,
solarize 0 / 0.2).
Paper: 76.7% linear top-1. Not yet run with this codebase; the number is the paper's.
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet_config("moco")
  c.batch_size = 4096
  c.num_epochs = 300.0
  c.augment.update(crop_scale=(0.08, 1.0), brightness=0.4, contrast=0.4, saturation=0.2,
                   hue=0.1)
  c.augment_views = ({"blur_prob": 1.0, "solarize_prob": 0.0},
                     {"blur_prob": 0.1, "solarize_prob": 0.2})
  c.model = common.model_config(
      c, name="vit", variant="B/16", pool="cls", posemb="sincos2d", dtype="bfloat16",
      param_dtype="float32", remat="none",
      head_hidden_dims=(4096, 4096), head_dim=256, head_last_bn=True,
      predictor_hidden_dims=(4096,), predictor_last_bn=True)
  c.moco.update(momentum=0.99, momentum_final=1.0, queue_size=0, predictor=True,
                symmetric=True)
  c.loss.temperature = 0.2
  c.optimizer.update(name="adamw", lr=1.5e-4, lr_batch_scale=256, weight_decay=0.1,
                     b1=0.9, b2=0.95, warmup_epochs=40.0, frozen=(r"backbone/embedding/.*",))
  return c
