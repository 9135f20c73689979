"""MoCo v3 with a small ViT on the embedded digits: predictor, in-batch keys, symmetric loss.

  python -m big_contrast.main --config=configs/moco_v3_digits.py --workdir=runs/moco_v3_digits

Measured on a 2-core CPU (AMD EPYC, 1 device), jax 0.10.2, 505 steps (90 epochs): 90 s
for the whole command. Test top-1: k-NN 94.2%, linear probe 95.8% (this ViT at random init:
70.0%, 89.2%).
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.digits_config("moco")
  c.moco.update(momentum=0.99, momentum_final=1.0, queue_size=0, predictor=True,
                symmetric=True)
  c.model = common.model_config(
      c, name="vit", variant="Ti/4", width=64, depth=4, heads=4, pool="cls", posemb="sincos2d",
      dtype="float32", param_dtype="float32", remat="none", head_hidden_dims=(256, 256),
      head_dim=64, head_last_bn=True, predictor_hidden_dims=(256,), predictor_last_bn=True)
  # MoCo v3's stability trick: a frozen random patch projection.
  c.optimizer.frozen = (r"backbone/embedding/.*",)
  c.loss.temperature = 0.2
  c.num_epochs = 90.0        # The small ViT is ~3x cheaper per step than the ResNet recipes.
  return c
