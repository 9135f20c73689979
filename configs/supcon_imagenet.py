"""SupCon, ResNet-50 on ImageNet-1k (Khosla et al. 2020, arXiv:2004.11362).

  python -m big_contrast.main --config=configs/supcon_imagenet.py --workdir=runs/supcon_in1k \
      --config.data.path=/data/imagenet_prepared

SimCLR's recipe with labels as positives: batch 4096, LARS, τ = 0.1, 700 epochs. The paper's
78.7% top-1 (ResNet-50) used AutoAugment; this recipe uses SimCLR's augmentation, so expect
less. Not yet run with this codebase; the number is the paper's.
"""
from configs import simclr_imagenet


def get_config(arg=None):
  c = simclr_imagenet.get_config(arg)
  c.num_epochs = 700.0
  c.loss.positives = "label"
  return c
