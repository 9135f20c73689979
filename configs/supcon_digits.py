"""SupCon (supervised contrastive) on the embedded digits: images of one class are positives.

  python -m big_contrast.main --config=configs/supcon_digits.py --workdir=runs/supcon_digits

Uses the training labels, so it is an upper reference for the self-supervised recipes.
Results: see the README table (measured, 2-core CPU).
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.digits_config()
  c.loss.positives = "label"
  c.loss.temperature = 0.1
  return c
