"""Poly-view contrastive learning, ResNet-50 on ImageNet-1k (Shidani et al. 2024, arXiv:2403.05490).

  python -m big_contrast.main --config=configs/poly_view_imagenet.py --workdir=runs/pvc_in1k \
      --config.data.path=/data/imagenet_prepared

The paper's headline regime: batch 256 unique images, many views each, 128 epochs (it reports
beating SimCLR at batch 4096 for 1024 epochs). num_views=8 is our choice; the paper sweeps
the view count, check its tables before quoting. Geometric PVC, LARS, τ = 0.1.
Not yet run with this codebase.
"""
from configs import simclr_imagenet


def get_config(arg=None):
  del arg
  c = simclr_imagenet.simclr_config("poly_view")
  c.batch_size = 256
  c.num_views = 8
  c.num_epochs = 128.0
  c.loss.objective = "geometric"
  return c
