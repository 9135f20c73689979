"""SimCLR ResNet-50 on ImageNet-1k, the paper's recipe (Chen et al. 2020, arXiv:2002.05709).

  python -m big_contrast.main --config=configs/simclr_imagenet.py --workdir=runs/simclr_in1k \
      --config.data.path=/data/imagenet_prepared

ImageNet as `tools.prepare_data --format=image_folder` writes it (README, Your own data), or
read in place with `--config.data.name=image_folder --config.data.path=/data/imagenet`.
Batch 4096, LARS with lr 0.3 × B/256 = 4.8, weight decay 1e-6, τ = 0.1, 10 warmup epochs then
cosine, 1000 epochs, colour distortion strength 1.0 and blur.
Paper: 69.3% linear-probe top-1 after 1000 epochs (64.6% after 100). Not yet run with this
codebase (no ImageNet or accelerator in our CI); the numbers are the paper's, not ours.
"""
from configs import common


def get_config(arg=None):
  del arg
  return simclr_config("simclr")


def simclr_config(method: str):
  """This recipe's data, model, augmentation and optimizer for `method` (the SimCLR family:
  simclr, poly_view, nnclr, ...)."""
  c = common.imagenet_config(method)
  c.batch_size = 4096
  c.num_epochs = 1000.0
  c.augment.update(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)   # Strength 1.0.
  c.model.update(head_hidden_dims=(2048,), head_dim=128)
  c.loss.temperature = 0.1
  c.optimizer.update(name="lars", lr=0.3, lr_batch_scale=256, weight_decay=1e-6,
                     warmup_epochs=10.0)
  return c
