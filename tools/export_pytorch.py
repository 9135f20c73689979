"""Export a big_contrast checkpoint to PyTorch: torchvision ResNets, timm ViTs, open_clip CLIP.

  python -m tools.export_pytorch --workdir=runs/simclr_digits --out=exported/simclr [--step=N]
      [--part=auto|image] [--pt]

Writes OUT/model.safetensors (the backbone, or the whole two-tower model), OUT/head.safetensors
(image methods: the projection head, and MoCo v3's predictor as predictor.safetensors) and
OUT/export.json, which says which PyTorch model each file loads into with
`load_state_dict(strict=True)` and how to build it. `--pt` also writes torch .pt state dicts.
The run's architecture is read from WORKDIR/config.json (written by the training loop).

In PyTorch (with this repository importable; otherwise follow export.json by hand):
  from tools.export_pytorch import load_torch
  model = load_torch("exported/simclr")            # strict load, eval mode
"""
import argparse
import json
import os

import ml_collections
import numpy as np

from big_contrast import initialize
from big_contrast import torch_convert as tc

# Methods whose image encoder is models.Encoder (backbone + projector [+ predictor]).
IMAGE_METHODS = ("simclr", "moco", "swav", "poly_view")


def _image_backbone(model_cfg, image_size, flat, module):
  """(state dict, how to build its torch model) of a ResNet or ViT backbone at `module`."""
  entries, info = tc.backbone_torch(model_cfg, image_size)
  return tc.export(tc.flat_module(flat, module), entries), info


def _head(flat, module):
  """(state dict, nn.Sequential description) of a models.MLPHead at `module`."""
  variables = tc.flat_module(flat, module)
  hidden = sum(1 for p in variables if p.startswith("params/hidden") and p.endswith("/kernel"))
  use_bn = any(p.startswith("params/hidden0_norm/") for p in variables)
  last_bn = any(p.startswith("batch_stats/out_norm/") for p in variables)
  layers = tc.mlp_head_layers(variables, hidden, use_bn, last_bn)
  return tc.export(variables, tc.mlp_head_entries(hidden, use_bn, last_bn)), {
      "library": "torch", "constructor": "torch.nn.Sequential", "layers": layers,
      "setup": [], "output": "projections [B, D]"}


def export_run(config, flat: dict, part: str = "auto") -> dict:
  """{file stem: (state dict, info)} for a run's config and flat checkpoint (read_source)."""
  size = config.augment.crop_size
  if config.method in IMAGE_METHODS:
    enc = "encoder/" if any(p.startswith("params/encoder/") for p in flat) else ""
    out = {"model": _image_backbone(config.model, size, flat, enc + "backbone"),
           "head": _head(flat, enc + "projector")}
    if any(p.startswith(f"params/{enc}predictor/") for p in flat):
      out["predictor"] = _head(flat, enc + "predictor")
    return out
  if config.method in ("clip", "siglip"):
    from input_pipeline import tokenizers
    if part == "image":
      return {"model": _image_backbone(config.model.image, size, flat, "image")}
    sigmoid = config.method == "siglip"
    tokenizer = tokenizers.get_tokenizer(config.text.tokenizer)
    info = tc.two_tower_open_clip(config.model, tokenizer, size, sigmoid)
    info["tokenizer"] = dict(config.text.tokenizer)
    entries = tc.two_tower_entries(config.model.image, config.model.text, size, sigmoid)
    return {"model": (tc.export(tc.flat_module(flat, ""), entries), info)}
  raise ValueError(f"config.method={config.method!r} has no PyTorch export.")


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: --workdir must be a training run's workdir "
                     "(the loop writes config.json there).")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="the training run's workdir")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--step", type=int, default=0, help="checkpoint step (0: the latest)")
  parser.add_argument("--part", choices=("auto", "image"), default="auto",
                      help="image: only the image tower of a two-tower model")
  parser.add_argument("--pt", action="store_true", help="also write torch .pt state dicts")
  args = parser.parse_args(argv)

  config = read_config(args.workdir)
  source = ml_collections.ConfigDict(dict(workdir=args.workdir, step=args.step))
  flat = initialize.read_source(source)
  files = export_run(config, flat, args.part)

  from safetensors.numpy import save_file
  os.makedirs(args.out, exist_ok=True)
  manifest = {"source": os.path.abspath(args.workdir), "step": args.step or "latest",
              "method": config.method, "files": {}}
  for stem, (state_dict, info) in files.items():
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    save_file(arrays, os.path.join(args.out, f"{stem}.safetensors"),
              metadata={"big_contrast": json.dumps(info)})
    if args.pt:
      import torch
      torch.save({k: torch.from_numpy(v) for k, v in arrays.items()},
                 os.path.join(args.out, f"{stem}.pt"))
    manifest["files"][f"{stem}.safetensors"] = info
  with open(os.path.join(args.out, "export.json"), "w") as f:
    json.dump(manifest, f, indent=2)
  for name, info in manifest["files"].items():
    print(f"{os.path.join(args.out, name)}: {info['constructor']} "
          f"{info.get('name', '')} ({info['output']})")


# --- PyTorch side -------------------------------------------------------------------------

def build_torch_model(info: dict):
  """The (randomly initialised) torch module an export's `info` describes."""
  import torch
  if info["library"] == "torchvision":
    import torchvision
    model = getattr(torchvision.models, info["constructor"].rsplit(".", 1)[1])(**info["kwargs"])
    for line in info["setup"]:
      exec(line, {"torch": torch, "model": model})  # pylint: disable=exec-used
    return model
  if info["library"] == "timm":
    import timm
    return timm.create_model(info["name"], pretrained=False, **info["kwargs"])
  if info["library"] == "open_clip":
    import open_clip
    return open_clip.CLIP(**info["kwargs"])
  if info["library"] == "torch":
    layers = {"Linear": lambda i, o, b: torch.nn.Linear(i, o, bias=b), "ReLU": torch.nn.ReLU,
              "BatchNorm1d": lambda n, affine: torch.nn.BatchNorm1d(n, affine=affine)}
    return torch.nn.Sequential(*(layers[name](*args) for name, *args in info["layers"]))
  raise ValueError(f"unknown library {info['library']!r} in the export's metadata.")


def load_torch(out_dir: str, stem: str = "model"):
  """The exported `stem` of `out_dir` as a torch module: built, loaded strictly, in eval mode."""
  from safetensors.torch import load_file
  with open(os.path.join(out_dir, "export.json")) as f:
    info = json.load(f)["files"][f"{stem}.safetensors"]
  model = build_torch_model(info)
  model.load_state_dict(load_file(os.path.join(out_dir, f"{stem}.safetensors")), strict=True)
  return model.eval()


if __name__ == "__main__":
  main()
