"""Export a big_contrast checkpoint to PyTorch: torchvision ResNets, timm ViTs, open_clip CLIP.

  python -m tools.export_pytorch --workdir=runs/simclr_digits --out=exported/simclr [--step=N]
      [--part=auto|image] [--pt]

Writes OUT/model.safetensors (the backbone, or the whole two-tower model), OUT/head.safetensors
(image methods: the projection head, and MoCo v3's predictor as predictor.safetensors) and
OUT/export.json, which says which PyTorch model each file loads into with
`load_state_dict(strict=True)` and how to build it. `--pt` also writes torch .pt state dicts.
Two-towers tokenized with CLIP's BPE also get its merges file and open_clip's tokenizer.
The run's architecture is read from WORKDIR/config.json (written by the training loop).

In PyTorch (with this repository importable; otherwise follow export.json by hand):
  from tools.export_pytorch import load_torch, load_tokenizer
  model = load_torch("exported/simclr")            # strict load, eval mode
  transform = load_transform("exported/simclr")    # PIL image -> the model's input tensor
  tokenize = load_tokenizer("exported/clip")       # open_clip SimpleTokenizer (CLIP BPE runs)
"""
import argparse
import gzip
import json
import os

import ml_collections
import numpy as np

from big_contrast import init_from
from big_contrast import methods
from big_contrast import run_config
from big_contrast import torch_convert as tc


def exportable(kind: str) -> list:
  """The methods whose `export` is `kind` ("encoder" or "two_tower")."""
  return [name for name, cls in methods.METHODS.items() if cls.export == kind]


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
  cls = methods.METHODS.get(config.method)
  if cls.export == "encoder":  # models.Encoder: backbone + projector [+ predictor].
    enc = "encoder/" if any(p.startswith("params/encoder/") for p in flat) else ""
    out = {"model": _image_backbone(config.model, size, flat, enc + "backbone"),
           "head": _head(flat, enc + "projector")}
    if any(p.startswith(f"params/{enc}predictor/") for p in flat):
      out["predictor"] = _head(flat, enc + "predictor")
    return out
  if cls.export == "two_tower":
    from input_pipeline import tokenizers
    if part == "image":
      return {"model": _image_backbone(config.model.image, size, flat, "image")}
    sigmoid = cls.sigmoid
    tokenizer = tokenizers.get_tokenizer(config.text.tokenizer)
    info = tc.two_tower_open_clip(config.model, tokenizer, size, sigmoid)
    entries = tc.two_tower_entries(config.model.image, config.model.text, size, sigmoid)
    return {"model": (tc.export(tc.flat_module(flat, ""), entries), info)}
  raise ValueError(f"config.method={config.method!r} has no PyTorch export; methods with one: "
                   f"{exportable('encoder') + exportable('two_tower')}.")


def preprocessing(config) -> dict:
  """How the exported model's inputs were prepared in evaluation, for a PyTorch user: the
  short side resized to data.image_size (bilinear, antialiased), the centre crop of
  augment.crop_size, pixels / 255, then (x - mean) / std per channel."""
  size, resize = config.augment.crop_size, config.data.image_size
  mean, std = [float(m) for m in config.data.mean], [float(s) for s in config.data.std]
  # An evaluation image smaller than the crop is resized up to it (Method.eval_view).
  upsample = f", Resize({size}, interpolation=InterpolationMode.BILINEAR)" if resize < size else ""
  return {"input_size": size, "resize_short_side": resize, "crop": "center",
          "crop_size": min(size, resize), "upsample_to": size if resize < size else None,
          "interpolation": "bilinear", "antialias": True, "scale": 1 / 255, "mean": mean,
          "std": std, "torchvision": (
              f"Compose([Resize({resize}, interpolation=InterpolationMode.BILINEAR, "
              f"antialias=True), CenterCrop({min(size, resize)}){upsample}, ToTensor(), "
              f"Normalize(mean={mean}, std={std})])")}


def export_tokenizer(tok_cfg, out_dir: str) -> dict:
  """How to tokenize for an exported two-tower: the run's tokenizer config and, for CLIP's
  BPE, its merges file copied into `out_dir` with open_clip's SimpleTokenizer, which gives the
  same ids (bar the corner cases in tokenizers.ClipBpeTokenizer's docstring; tested)."""
  from input_pipeline import tokenizers
  info = {"big_contrast": dict(tok_cfg)}
  if tok_cfg.get("name") != "clip_bpe":
    return info
  if tok_cfg.get("num_merges") not in (None, tokenizers.CLIP_NUM_MERGES):
    info["note"] = ("num_merges differs from CLIP's: open_clip's SimpleTokenizer always uses "
                    "all of them; tokenize with big_contrast's input_pipeline.tokenizers.")
    return info
  name = "bpe_simple_vocab_16e6.txt.gz"  # open_clip reads it with gzip.
  with open(tok_cfg.path, "rb") as f:
    data = f.read()
  with open(os.path.join(out_dir, name), "wb") as f:
    f.write(data if tok_cfg.path.endswith(".gz") else gzip.compress(data))
  lower = tok_cfg.get("lower")
  info.update(library="open_clip", constructor="open_clip.tokenizer.SimpleTokenizer",
              kwargs={"bpe_path": name, "context_length": tok_cfg.length,
                      "clean": "lower" if lower is None or lower else "whitespace"})
  return info


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="the training run's workdir")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--step", type=int, default=0, help="checkpoint step (0: the latest)")
  parser.add_argument("--part", choices=("auto", "image"), default="auto",
                      help="image: only the image tower of a two-tower model")
  parser.add_argument("--pt", action="store_true", help="also write torch .pt state dicts")
  args = parser.parse_args(argv)

  config = run_config.read_saved(args.workdir)
  source = ml_collections.ConfigDict(dict(workdir=args.workdir, step=args.step))
  flat = init_from.read_source(source)
  files = export_run(config, flat, args.part)

  from safetensors.numpy import save_file
  os.makedirs(args.out, exist_ok=True)
  manifest = {"source": os.path.abspath(args.workdir), "step": args.step or "latest",
              "method": config.method, "preprocessing": preprocessing(config), "files": {}}
  for stem, (state_dict, info) in files.items():
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    save_file(arrays, os.path.join(args.out, f"{stem}.safetensors"),
              metadata={"big_contrast": json.dumps(info)})
    if args.pt:
      import torch
      torch.save({k: torch.from_numpy(v) for k, v in arrays.items()},
                 os.path.join(args.out, f"{stem}.pt"))
    manifest["files"][f"{stem}.safetensors"] = info
  if methods.METHODS.get(config.method).export == "two_tower" and args.part == "auto":
    manifest["tokenizer"] = export_tokenizer(config.text.tokenizer, args.out)
  with open(os.path.join(args.out, "export.json"), "w") as f:
    json.dump(manifest, f, indent=2)
  for name, info in manifest["files"].items():
    print(f"{os.path.join(args.out, name)}: {info['constructor']} "
          f"{info.get('name', '')} ({info['output']})")


# --- PyTorch side -------------------------------------------------------------------------

def build_torch_model(info: dict):
  """The (randomly initialised) torch module an export's `info` describes: its constructor
  called with its kwargs, then its setup lines run (with `torch`, `model` and the library)."""
  import torch
  library = info["library"]
  if library == "torch":
    layers = {"Linear": lambda i, o, b: torch.nn.Linear(i, o, bias=b), "ReLU": torch.nn.ReLU,
              "BatchNorm1d": lambda n, affine: torch.nn.BatchNorm1d(n, affine=affine)}
    return torch.nn.Sequential(*(layers[name](*args) for name, *args in info["layers"]))
  if library not in ("torchvision", "timm", "open_clip"):
    raise ValueError(f"unknown library {library!r} in the export's metadata.")
  import importlib
  lib = importlib.import_module(library)
  constructor = info["constructor"].split(".")[1:]
  fn = lib
  for attr in constructor:
    fn = getattr(fn, attr)
  if library == "timm":
    model = fn(info["name"], pretrained=False, **info["kwargs"])
  else:
    model = fn(**info["kwargs"])
  scope = {"torch": torch, "model": model, library: lib}
  if library == "open_clip":  # Its timm adapter's trunk is replaced by a setup line.
    scope["timm"] = importlib.import_module("timm")
  for line in info["setup"]:
    exec(line, scope)  # pylint: disable=exec-used
  return model


def load_torch(out_dir: str, stem: str = "model"):
  """The exported `stem` of `out_dir` as a torch module: built, loaded strictly, in eval mode."""
  from safetensors.torch import load_file
  with open(os.path.join(out_dir, "export.json")) as f:
    info = json.load(f)["files"][f"{stem}.safetensors"]
  model = build_torch_model(info)
  model.load_state_dict(load_file(os.path.join(out_dir, f"{stem}.safetensors")), strict=True)
  return model.eval()


def load_transform(out_dir: str):
  """The torchvision transform of an export's "preprocessing": PIL image -> input tensor."""
  from torchvision import transforms
  with open(os.path.join(out_dir, "export.json")) as f:
    pre = json.load(f)["preprocessing"]
  mode = transforms.InterpolationMode(pre["interpolation"])
  steps = [transforms.Resize(pre["resize_short_side"], antialias=pre["antialias"],
                             interpolation=mode), transforms.CenterCrop(pre["crop_size"])]
  if pre.get("upsample_to"):
    steps.append(transforms.Resize(pre["upsample_to"], interpolation=mode))
  return transforms.Compose([*steps, transforms.ToTensor(),
                             transforms.Normalize(pre["mean"], pre["std"])])


def load_tokenizer(out_dir: str):
  """The exported two-tower's open_clip tokenizer (CLIP's BPE runs only): texts -> ids."""
  with open(os.path.join(out_dir, "export.json")) as f:
    info = json.load(f).get("tokenizer", {})
  if info.get("library") != "open_clip":
    raise ValueError(f"{out_dir} has no open_clip tokenizer (only runs with "
                     "config.text.tokenizer.name='clip_bpe' do); export.json's 'tokenizer' "
                     "has the run's tokenizer config for input_pipeline.tokenizers.")
  import open_clip
  kwargs = dict(info["kwargs"], bpe_path=os.path.join(out_dir, info["kwargs"]["bpe_path"]))
  return open_clip.tokenizer.SimpleTokenizer(**kwargs)


if __name__ == "__main__":
  main()
