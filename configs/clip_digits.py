"""CLIP (softmax two-tower loss) on the embedded digits with generated captions.

  python -m big_contrast.main --config=configs/clip_digits.py --workdir=runs/clip_digits

ViT image tower (4 blocks of width 64, patch 4, MAP pooling), byte-level bidirectional text
transformer (2 blocks of width 64, 48 tokens), 64-d joint space, batch 256, 505 steps
(90 epochs), AdamW. Measured on a 2-core CPU (AMD EPYC, 1 device), jax 0.10.2: 95 s for
the whole command. Test split (360 images, chance 10% / 0.28%):
                 zero-shot top-1   R@1 i2t / t2i   R@10 i2t / t2i   k-NN (image tower)
  random init         9.2%          0.3% / 0.3%      3.3% / 2.5%        60.8%
  trained            80.0%          7.5% / 13.1%    68.1% / 68.1%       96.7%
Retrieval R@1 is bounded by the captions: 287 distinct texts for 360 images, ties count
against the model.
"""
from configs import common


def get_config(arg=None):
  del arg
  return common.image_text_digits_config("clip")
