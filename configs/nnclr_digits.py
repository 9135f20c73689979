"""NNCLR on the embedded digits: nearest neighbours from a support queue as positives.

  python -m big_contrast.main --config=configs/nnclr_digits.py --workdir=runs/nnclr_digits

The ResNet-18 and augmentation of simclr_digits.py, a 2-layer predictor, a support set of
2,048 projections (1.4 epochs of the 1,437 training images), τ = 0.2.
Measured on a 2-core CPU (AMD EPYC, 1 device), jax 0.10.2, 168 steps: 98 s for the
whole command. Test top-1: k-NN 92.8%, linear probe 96.9% (random init: 66.1%, 78.9%).
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.digits_config("nnclr")
  c.nnclr.queue_size = 2048
  return c
