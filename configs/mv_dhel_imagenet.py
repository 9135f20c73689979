"""MV-DHEL, ResNet-50 on ImageNet-1k (Koromilas et al. 2025, arXiv:2507.06979).

  python -m big_contrast.main --config=configs/mv_dhel_imagenet.py --workdir=runs/mv_dhel_in1k \
      --config.data.path=/data/imagenet_prepared

poly_view_imagenet.py (SimCLR's augmentation and LARS, batch 256) with 4 views per image and
the MV-DHEL objective. The authors report ImageNet-1k with 2 and 4 views (their README: 4-view
MV-DHEL 62.6% linear top-1 in their shorter schedule); their exact schedule was not readable
here, so the rest follows poly_view_imagenet.py. Not yet run with this codebase.
"""
from configs import poly_view_imagenet


def get_config(arg=None):
  c = poly_view_imagenet.get_config(arg)
  c.num_views = 4
  c.loss.objective = "mv_dhel"
  return c
