"""Poly-view (geometric PVC) on the embedded digits: 128 images × 4 views per step.

  python -m big_contrast.main --config=configs/poly_view_digits.py --workdir=runs/poly_view_digits

The paper's regime at fixed compute: half the unique images of simclr_digits (256 × 2 views)
and twice the views, so each step encodes the same 512 views; same number of steps.
Results: see the README table (measured, 2-core CPU).
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.digits_config()
  c.method = "poly_view"
  c.batch_size = 128
  c.num_views = 4
  c.num_epochs = 15.0        # Same 150 steps (and 512 views per step) as simclr_digits.
  c.loss.objective = "geometric"
  c.checkpoint.every_steps = 50
  return c
