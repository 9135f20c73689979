"""SupCon (supervised contrastive) on the embedded digits: images of one class are positives.

  python -m big_contrast.main --config=configs/supcon_digits.py --workdir=runs/supcon_digits

Uses the training labels, so it is an upper reference for the self-supervised recipes.
Measured on a 2-core CPU (AMD EPYC, 1 device), jax 0.10.2, 168 steps: 97 s for the
whole command. Test top-1: k-NN 98.6%, linear probe 98.3% (random init: 66.1%, 78.9%).
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.digits_config()
  c.loss.positives = "label"
  c.loss.temperature = 0.1
  return c
