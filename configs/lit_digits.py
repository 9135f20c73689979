"""LiT on the embedded digits: a locked image tower from this project's SimCLR checkpoint.

  python -m big_contrast.main --config=configs/simclr_digits.py --workdir=runs/simclr_digits
  python -m big_contrast.main --config=configs/lit_digits.py --workdir=runs/lit_digits

Locked-image tuning (Zhai et al. 2022, arXiv:2111.07991): the image tower is the ResNet-18 of
simclr_digits.py, loaded from its checkpoint (`init_from`) and locked (`optimizer.frozen`:
no gradient, no optimizer state, bit-identical; BatchNorm in inference mode); the linear
image projection, the text tower and t train with the softmax CLIP loss, 505 steps.
Measured on a 2-core CPU (AMD EPYC, 1 device), jax 0.10.2: 107 s for the second command (98 s for
the first). Test split (chance 10% / 0.28%); the k-NN of the locked tower is unchanged:
                      zero-shot top-1   R@1 i2t / t2i   R@10 i2t / t2i   k-NN (image tower)
  loaded, untrained        12.2%          0.0% / 0.3%      2.2% / 2.5%        96.1%
  trained                  88.3%          8.1% / 11.1%    65.3% / 68.6%       96.1%
"""
import ml_collections

from configs import common
from configs import simclr_digits


def get_config(arg=None):
  del arg
  c = common.image_text_digits_config("clip")
  image = simclr_digits.get_config().model
  c.model.image = ml_collections.ConfigDict(dict(name=image.name, depth=image.depth,
                                                 width=image.width, stem=image.stem))
  c.optimizer.frozen = (r"image/.*",)
  c.init_from.update(workdir="runs/simclr_digits", rules=(
      (r"params/image/(.*)", r"params/backbone/\1"),
      (r"state/model/batch_stats/image/(.*)", r"state/model/batch_stats/backbone/\1")))
  return c
