"""NNCLR on the embedded digits: nearest neighbours from a support queue as positives.
  python -m big_contrast.main --config=configs/nnclr_digits.py --workdir=runs/nnclr_digits
The ResNet-18 and augmentation of simclr_digits.py, a 2-layer predictor, a support set of
2,048 projections (about 1.7 epochs of this 1,203-image split), τ = 0.2.
MEASURED
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.digits_config("nnclr")
  c.nnclr.queue_size = 2048
  return c
