"""SwAV on the embedded digits: 2 large + 4 small crops, 30 prototypes, Sinkhorn codes.

  python -m big_contrast.main --config=configs/swav_digits.py --workdir=runs/swav_digits

Results: see the README table (measured, 2-core CPU).
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.digits_config()
  c.method = "swav"
  c.multicrop.num_small = 4
  c.swav.update(num_prototypes=30, epsilon=0.05, sinkhorn_iterations=3, queue_size=0,
                freeze_prototypes_epochs=1.0)
  c.loss.temperature = 0.1
  return c
