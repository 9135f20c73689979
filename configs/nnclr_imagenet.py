"""NNCLR, ResNet-50 on ImageNet-1k (Dwibedi et al. 2021, arXiv:2104.14548).

  python -m big_contrast.main --config=configs/nnclr_imagenet.py --workdir=runs/nnclr_in1k \
      --config.data.path=/data/imagenet_prepared

SimCLR's data, augmentation and LARS setup (simclr_imagenet.py) with NNCLR's support set of
98,304 projections, a 3-layer projector (2048-2048-256) and a predictor (4096 hidden),
τ = 0.1, batch 4096, 1000 epochs. Paper: 75.6% linear top-1 (ResNet-50, 1000 epochs). Not
yet run with this codebase (no ImageNet or accelerator here); the number is the paper's.
"""
from configs import simclr_imagenet


def get_config(arg=None):
  del arg
  c = simclr_imagenet.simclr_config("nnclr")
  c.model.update(head_hidden_dims=(2048, 2048), head_dim=256, head_last_bn=True,
                 predictor_hidden_dims=(4096,))
  c.nnclr.queue_size = 98304
  return c
