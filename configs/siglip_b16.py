"""SigLIP B/16 at the paper's scale (Zhai et al. 2023, arXiv:2303.15343), chunked ring loss.

  python -m big_contrast.main --config=configs/siglip_b16.py --workdir=runs/siglip_b16 \
      --config.data.data_dir=/path/to/tensorflow_datasets --config.data.tfds_name=NAME \
      --config.text.tokenizer.path=/path/to/spiece.model

Image-text records prepared with tfds as array_record (`tfds build NAME
--file_format=array_record`), e.g. coco_captions (features image, captions/text); WebLI,
the paper's data, is not public. ViT-B/16 with MAP pooling at 224 px; bidirectional
B-sized text transformer pooled at the last token, 64 SentencePiece tokens; batch 32768
with `loss.impl="ring"` (each device holds b×b logits, never b×N) and `model.remat="full"`
(the setting that fits v5e-256 and v4-64 at this batch); t init 10, b init -10
(the paper's). Optimiser: AdamW, lr 1e-3, weight decay 1e-4, β2 = 0.95, gradient clipping
at 1.0, warmup then cosine; these follow big_vision's public SigLIP configs, not a
re-read of the paper. Not yet run with this codebase (no accelerator or WebLI here).
"""
import ml_collections

from configs import common


def get_config(arg=None):
  del arg
  c = b16_config("siglip")
  c.loss.impl = "ring"
  # Without remat a pair needs 245 MB: 31 GiB per v5e chip at this batch on v5e-256
  # (tools/aot_compile.py); with it, 5.5 GiB there (README, "Planning pod runs from a CPU").
  c.model.remat = "full"
  return c


def b16_config(method: str):
  """This recipe for an image-text `method` (clip or siglip), without the loss's own keys."""
  c = common.imagenet_config(method)
  c.batch_size = 32768
  c.num_epochs = 10.0
  c.data.update(name="tfds_captions", tfds_name="coco_captions", train_split="train",
                test_split="val", image_size=224, image_key="image", text_key="captions/text",
                label_key="")
  c.augment.update(crop_size=224, crop_scale=(0.9, 1.0), flip_prob=0.0, color_jitter_prob=0.0,
                   grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
  c.text.tokenizer.update(name="sentencepiece", length=64, path="")
  c.model = common.model_config(
      c, name="two_tower", dtype="bfloat16", param_dtype="float32", remat="none", embed_dim=768,
      image=ml_collections.ConfigDict(dict(name="vit", variant="B/16", pool="map",
                                           posemb="learn")),
      text=ml_collections.ConfigDict(dict(width=768, depth=12, heads=12, causal=False,
                                          pool="last")),
      temperature_init=10.0, bias_init=-10.0)
  c.optimizer.update(name="adamw", lr=1e-3, lr_batch_scale=0, weight_decay=1e-4, b1=0.9,
                     b2=0.95, grad_clip_norm=1.0, warmup_epochs=0.5)
  c.eval.update(evaluators=("retrieval",), batch_size=1024)
  return c
