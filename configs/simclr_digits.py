"""SimCLR on the embedded digits (scikit-learn, 1437 train / 360 test, 8x8 -> 16x16).

  python -m big_contrast.main --config=configs/simclr_digits.py --workdir=runs/simclr_digits

ResNet-18 (CIFAR stem, width 16, 0.75M parameters), batch 256, 30 epochs (168 steps), AdamW.
Measured on a 2-core CPU (AMD EPYC, 1 device), jax 0.10.2: 2.7 min in the loop (~300 img/s),
3.2 min for the README's quickstart command in a fresh clone (1.6 min and ~520 img/s on
another day's machine of the same type). Test-split accuracy of the frozen backbone (the run
evaluates both itself):
                 k-NN top-1 (k=20)   k-NN top-5   linear probe top-1
  random init         66.1%            97.5%           79.7%
  trained             96.4%           100.0%           98.3%
"""
from configs import common


def get_config(arg=None):
  del arg
  return common.digits_config()
