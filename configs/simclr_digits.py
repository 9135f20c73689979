"""SimCLR on the embedded digits (scikit-learn, 1437 train / 360 test, 8x8 -> 16x16).

  python -m big_contrast.main --config=configs/simclr_digits.py --workdir=runs/simclr_digits

ResNet-18 (CIFAR stem, width 16, 0.75M parameters), batch 256, 30 epochs (150 steps), AdamW.
Measured on a 2-core CPU (this project's CI machine kind), jax 0.10.2: 2.6 min wall time,
~285 img/s. Test-split top-1 of the frozen backbone (the run evaluates both itself):
                 k-NN (k=20)   linear probe
  random init      66.4%          76.9%
  trained          96.1%          98.1%
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.base_config()
  c.batch_size = 256
  c.num_epochs = 30.0
  c.log_every_steps = 10
  c.data.image_size = 16
  c.data.mean, c.data.std = (0.5,) * 3, (0.5,) * 3
  c.augment.crop_size = 16
  c.augment.crop_scale = (0.3, 1.0)    # Digits are tiny; 8% crops erase the glyph.
  c.augment.flip_prob = 0.0            # Mirrored digits are other glyphs (2/5, 3/E).
  c.model.depth, c.model.width, c.model.stem = 18, 16, "cifar"
  c.model.head_hidden_dims, c.model.head_dim = (256,), 64
  c.loss.temperature = 0.2
  c.optimizer.update(name="adamw", lr=2e-3, lr_batch_scale=0, weight_decay=1e-4,
                     warmup_epochs=2.0)
  c.checkpoint.every_steps = 50
  c.eval.update(at_start=True, every_steps=0, probe_epochs=100, probe_batch_size=256)
  return c
