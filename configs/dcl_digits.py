"""DCL (decoupled contrastive learning) on the embedded digits: SimCLR without the
positive in the denominator.

  python -m big_contrast.main --config=configs/dcl_digits.py --workdir=runs/dcl_digits

Results: see the README table (measured, 2-core CPU).
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.digits_config()
  c.loss.decoupled = True
  return c
