"""Loading an export of tools/export_pytorch.py into PyTorch: the model, its evaluation
transform and (CLIP's BPE runs) its tokenizer, from OUT/export.json and the safetensors.

Imports neither JAX nor the rest of this project, so a PyTorch project loads an export with
this project installed and nothing of it running:

  from big_contrast.torch_load import load_torch, load_transform
  model, transform = load_torch(OUT), load_transform(OUT)
"""
import importlib
import json
import os


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
