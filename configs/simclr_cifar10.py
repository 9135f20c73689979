"""SimCLR ResNet-50 (CIFAR stem) on CIFAR-10, SimCLR appendix B.9 (arXiv:2002.05709).

  python -m big_contrast.main --config=configs/simclr_cifar10.py --workdir=runs/simclr_c10 \
      --config.data.data_dir=/path/to/tensorflow_datasets

Needs cifar10 prepared by tensorflow-datasets in array_record format (see the README).
Batch 1024, LARS lr 1.0 × B/256, weight decay 1e-4, τ = 0.5, colour strength 0.5, no blur, 1000 epochs.
Paper: 94.0% linear-probe top-1 at its best batch size and temperature. Not yet run with this codebase (no CIFAR download or
accelerator here); the number is the paper's, not ours.
"""
from configs import common


def get_config(arg=None):
  del arg
  c = common.base_config()
  c.batch_size = 1024
  c.num_epochs = 1000.0
  c.data.update(name="tfds", tfds_name="cifar10", train_split="train", test_split="test",
                image_size=32, num_workers=8, mean=(0.4914, 0.4822, 0.4465),
                std=(0.2470, 0.2435, 0.2616))
  c.augment.update(crop_size=32, blur_prob=0.0)   # Strength 0.5 is the default jitter.
  c.model.update(depth=50, stem="cifar", dtype="bfloat16")
  c.loss.temperature = 0.5
  c.optimizer.update(name="lars", lr=1.0, lr_batch_scale=256, weight_decay=1e-4,
                     warmup_epochs=10.0)
  c.checkpoint.every_steps = 1000
  c.eval.update(every_steps=10_000, batch_size=1000)
  c.eval.linear_probe.update(epochs=90, batch_size=1024)
  return c
