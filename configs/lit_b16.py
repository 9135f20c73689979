"""LiT: a locked ViT-B/16 image tower from this project's MoCo v3 run, text tower trained.

  python -m big_contrast.main --config=configs/moco_v3_imagenet.py --workdir=runs/mocov3_in1k ...
  python -m big_contrast.main --config=configs/lit_b16.py --workdir=runs/lit_b16 \
      --config.data.data_dir=/path/to/tensorflow_datasets --config.data.tfds_name=NAME \
      --config.text.tokenizer.path=/path/to/spiece.model

Locked-image tuning (Zhai et al. 2022, arXiv:2111.07991, "LiT"): the image tower is loaded
from the MoCo v3 checkpoint (`init_from`; paths backbone/... -> image/...) and locked
(`optimizer.frozen = ("image/.*",)`); the image projection, text tower, t (and b) train.
The paper's best setting locks a supervised or self-supervised image model and uses the
contrastive softmax loss at large batch (here SigLIP's settings otherwise). Not yet run with
this codebase.
"""
from configs import siglip_b16


def get_config(arg=None):
  del arg
  c = siglip_b16.b16_config("clip")
  c.model.image.update(pool="cls", posemb="sincos2d")   # MoCo v3's ViT.
  c.model.temperature_init = 1 / 0.07
  c.optimizer.frozen = (r"image/.*",)
  c.init_from.update(workdir="runs/mocov3_in1k", rules=((r"params/image/(.*)",
                                                         r"params/backbone/\1"),))
  return c
