"""MoCo v2, ResNet-50 on ImageNet-1k (Chen et al. 2020, "Improved Baselines", arXiv:2003.04297).

  python -m big_contrast.main --config=configs/moco_v2_imagenet.py --workdir=runs/mocov2_in1k \
      --config.data.path=/data/imagenet_prepared

Batch 256, SGD lr 0.03 × B/256 with momentum 0.9, weight decay 1e-4, cosine, 200 epochs,
τ = 0.2, queue 65536, key-encoder momentum 0.999, MLP head 2048-128, SimCLR-style
augmentation with blur and crops of 20-100% area.
Paper: 67.5% linear top-1 after 200 epochs (71.1% after 800). Not yet run with this
codebase; the numbers are the paper's.
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.imagenet_config("moco")
  c.batch_size = 256
  c.num_epochs = 200.0
  c.augment.update(crop_scale=(0.2, 1.0))
  c.model.update(head_hidden_dims=(2048,), head_dim=128, head_bn=False)
  c.moco.update(momentum=0.999, momentum_final=0.999, queue_size=65536, predictor=False,
                symmetric=False, bn_groups=8)
  c.loss.temperature = 0.2
  c.optimizer.update(name="sgd", lr=0.03, lr_batch_scale=256, weight_decay=1e-4,
                     momentum=0.9, warmup_epochs=0.0)
  return c
