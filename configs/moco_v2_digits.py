"""MoCo v2 on the embedded digits: momentum encoder and a queue of 1024 keys.

  python -m big_contrast.main --config=configs/moco_v2_digits.py --workdir=runs/moco_v2_digits

Results: see the README table (measured, 2-core CPU).
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.digits_config()
  c.method = "moco"
  c.moco.update(momentum=0.99, momentum_final=0.99, queue_size=1024, predictor=False,
                symmetric=False)
  c.model.head_bn = False               # MoCo v2's MLP head: fc-ReLU-fc.
  c.loss.temperature = 0.2
  return c
