"""Poly-view's sufficient-statistics objective, ResNet-50 on ImageNet-1k (arXiv:2403.05490).

  python -m big_contrast.main --config=configs/poly_view_suffstats_imagenet.py \
      --workdir=runs/pvc_suffstats_in1k --config.data.path=/data/imagenet_prepared

poly_view_imagenet.py (batch 256, 8 views, 128 epochs) with the sufficient-statistics
objective. Not yet run with this codebase.
"""
from configs import poly_view_imagenet


def get_config(arg=None):
  c = poly_view_imagenet.get_config(arg)
  c.loss.objective = "sufficient_statistics"
  return c
