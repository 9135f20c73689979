"""DCL, ResNet-50 on ImageNet-1k at batch 256 (Yeh et al. 2022, arXiv:2110.06848).

  python -m big_contrast.main --config=configs/dcl_imagenet.py --workdir=runs/dcl_in1k \
      --config.data.path=/data/imagenet_prepared

SimCLR's recipe with the decoupled loss at the small batch DCL targets: batch 256, 200 epochs,
LARS lr 0.3 × B/256, τ = 0.1.
Paper: 68.2% linear top-1 (batch 256, 200 epochs, tuned; 66.9% before tuning), +6.4 points
over its SimCLR baseline. Not yet run with this codebase; the numbers are the paper's.
"""
from configs import simclr_imagenet


def get_config(arg=None):
  c = simclr_imagenet.get_config(arg)
  c.batch_size = 256
  c.num_epochs = 200.0
  c.loss.decoupled = True
  return c
