"""MoCo v2 on the embedded digits: momentum encoder and a queue of 1024 keys.

  python -m big_contrast.main --config=configs/moco_v2_digits.py --workdir=runs/moco_v2_digits

Shuffle-BN with 8 groups of 32 (moco.bn_groups). Measured on a 2-core CPU (AMD EPYC,
1 device), jax 0.10.2, 168 steps: 72 s for the whole command. Test top-1: k-NN 92.2%, linear
probe 95.3% (random init: 66.1%, 78.9%).
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.digits_config("moco")
  c.moco.update(momentum=0.99, momentum_final=0.99, queue_size=1024, predictor=False,
                symmetric=False, bn_groups=8)
  c.model.head_bn = False               # MoCo v2's MLP head: fc-ReLU-fc.
  c.loss.temperature = 0.2
  return c
