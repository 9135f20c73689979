"""Poly-view's sufficient-statistics objective on the embedded digits, 4 views.
  python -m big_contrast.main --config=configs/poly_view_suffstats_digits.py \
      --workdir=runs/poly_view_suffstats_digits
poly_view_digits.py with loss.objective="sufficient_statistics" (losses/poly_view.py says
which parts of its form are reconstructed).
MEASURED
"""
from configs import poly_view_digits


def get_config(arg=None):
  c = poly_view_digits.get_config(arg)
  c.loss.objective = "sufficient_statistics"
  return c
