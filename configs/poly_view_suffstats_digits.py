"""Poly-view's sufficient-statistics objective on the embedded digits, 4 views.

  python -m big_contrast.main --config=configs/poly_view_suffstats_digits.py \
      --workdir=runs/poly_view_suffstats_digits

poly_view_digits.py with loss.objective="sufficient_statistics" (losses/poly_view.py says
which parts of its form are reconstructed).
Measured on a 2-core CPU (AMD EPYC, 1 device), jax 0.10.2, 168 steps: 98 s for the
whole command. Test top-1: k-NN 96.7%, linear probe 97.5% (random init: 66.1%, 78.9%).
"""
from configs import poly_view_digits


def get_config(arg=None):
  c = poly_view_digits.get_config(arg)
  c.loss.objective = "sufficient_statistics"
  return c
