"""CLIP ViT-B/16 on Conceptual Captions (CC3M) from img2dataset / webdataset tars.

  python -m tools.prepare_data --format=webdataset --input='/data/cc3m/{00000..00331}.tar' \
      --split=train --out=/data/cc3m_prepared
  python -m tools.prepare_data --format=webdataset --input='/data/cc3m_val/{00000..00001}.tar' \
      --split=val --out=/data/cc3m_prepared
  python -m big_contrast.main --config=configs/clip_cc3m.py --workdir=runs/clip_cc3m \
      --config.data.path=/data/cc3m_prepared \
      --config.text.tokenizer.path=/path/to/bpe_simple_vocab_16e6.txt.gz

A CSV of (filepath, title) prepares the same way (`--format=csv --input=train.csv`), as
open_clip's other input. Softmax CLIP (Radford et al. 2021, arXiv:2103.00020) with open_clip's
CC3M settings where they apply to ViT-B/16: global batch 1024, AdamW lr 1e-3, β2 = 0.98,
weight decay 0.1, about 10k warmup steps (3.5 epochs), cosine, 30 epochs; CLIP's BPE at 77
tokens with a causal text transformer of width 512, class-token image pooling, a 512-d joint
space. Views: one random-resized crop of 90-100% area per pair, cut from the full-resolution
image on the host. Evaluation: image-text retrieval on the val split. Not yet run with this codebase (no CC3M or accelerator here).
"""
from configs import siglip_b16


def get_config(arg=None):
  del arg
  c = siglip_b16.b16_config("clip")
  c.batch_size = 1024
  c.num_epochs = 30.0
  c.data.update(name="prepared", train_split="train", test_split="val", image_size=224,
                num_workers=16)
  c.text.tokenizer.update(name="clip_bpe", length=77, path="")
  # CLIP ViT-B/16's towers: class-token pooling, a 512-wide causal text transformer.
  c.model.image.pool = "cls"
  c.model.text.update(width=512, heads=8, causal=True)
  c.model.embed_dim = 512
  c.model.temperature_init = 1 / 0.07
  c.optimizer.update(lr=1e-3, weight_decay=0.1, b2=0.98, warmup_epochs=3.5)
  c.eval.update(evaluators=("retrieval",), batch_size=1024)
  return c
