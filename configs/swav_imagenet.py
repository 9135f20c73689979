"""SwAV, ResNet-50 on ImageNet-1k with multi-crop (Caron et al. 2020, arXiv:2006.09882).

  python -m big_contrast.main --config=configs/swav_imagenet.py --workdir=runs/swav_in1k \
      --config.data.path=/data/imagenet_prepared

2×224 (14-100% area) + 6×96 (5-14%) crops, batch 4096, LARS lr 0.3 × B/256 = 4.8 decaying to
0.0048, weight decay 1e-6, 10 warmup epochs, 800 epochs, 3000 prototypes, ε = 0.05, 3 Sinkhorn
iterations, τ = 0.1, prototypes frozen for the first epoch, no queue at this batch size.
Paper: 75.3% linear top-1. Not yet run with this codebase; the number is the paper's.
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet_config("swav")
  c.batch_size = 4096
  c.num_epochs = 800.0
  c.augment.update(crop_scale=(0.14, 1.0), brightness=0.8, contrast=0.8, saturation=0.8,
                   hue=0.2)
  c.multicrop.num_small = 6
  c.model.update(head_hidden_dims=(2048,), head_dim=128)
  c.swav.update(num_prototypes=3000, epsilon=0.05, sinkhorn_iterations=3, queue_size=0,
                freeze_prototypes_epochs=1.0)
  c.loss.temperature = 0.1
  c.optimizer.update(name="lars", lr=0.3, lr_batch_scale=256, weight_decay=1e-6,
                     warmup_epochs=10.0, min_lr_ratio=0.001)
  return c
