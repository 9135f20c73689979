"""SimCLR on the embedded digits (scikit-learn, 1437 train / 360 test, 8x8 -> 16x16).

  python -m big_contrast.main --config=configs/simclr_digits.py --workdir=runs/simclr_digits

ResNet-18 (CIFAR stem, width 16, 0.75M parameters), batch 256, 30 epochs (168 steps), AdamW.
Measured on a 2-core CPU (AMD EPYC, 1 device), jax 0.10.2: 1.6 min in the loop, 98 s
for the whole command, ~520 img/s. Test-split top-1 of the frozen backbone (the run evaluates
both itself):
                 k-NN (k=20)   linear probe
  random init      66.1%          78.9%
  trained          96.1%          98.3%
"""
from configs import common


def get_config(arg=None):
  del arg
  return common.digits_config()
