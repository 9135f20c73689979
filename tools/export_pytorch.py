"""Export a big_contrast checkpoint to PyTorch: torchvision ResNets, timm ViTs, open_clip CLIP.

  python -m tools.export_pytorch --workdir=runs/simclr_digits --out=exported/simclr [--step=N]
      [--part=auto|image] [--pt]

Writes OUT/model.safetensors (the backbone, or the whole two-tower model), OUT/head.safetensors
(image methods: the projection head, and MoCo v3's predictor as predictor.safetensors) and
OUT/export.json, which says which PyTorch model each file loads into with
`load_state_dict(strict=True)` and how to build it. `--pt` also writes torch .pt state dicts.
Two-towers tokenized with CLIP's BPE also get its merges file and open_clip's tokenizer.
The run's architecture is read from WORKDIR/config.json (written by the training loop). The
checkpoint (--step, default the latest) is checked against its content digest first, and the
files are written beside OUT and moved into place once complete: a failed export writes none.

In PyTorch (big_contrast/torch_load.py, which imports no JAX; or follow export.json by hand):
  from big_contrast.torch_load import load_torch, load_transform, load_tokenizer
  model = load_torch("exported/simclr")            # strict load, eval mode
  transform = load_transform("exported/simclr")    # PIL image -> the model's input tensor
  tokenize = load_tokenizer("exported/clip")       # open_clip SimpleTokenizer (CLIP BPE runs)
"""
import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from big_contrast import checkpoint
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


def _fail(message: str, code: int):
  """One line on stderr, then exit `code`: 2 for wrong flags, 1 for what the run holds."""
  sys.stderr.write(f"FATAL {message}\n")
  sys.exit(code)


def _read_run(workdir: str):
  """(config, checkpoint steps) of the run in `workdir`; exits 2 naming --workdir if it is
  not a training run's workdir with a checkpoint."""
  if not os.path.isdir(workdir):
    _fail(f"--workdir={workdir!r} does not exist; name a training run's workdir (the one "
          "holding config.json and checkpoints/).", 2)
  path = os.path.join(workdir, "config.json")
  try:  # run_config.read_saved's own errors suggest --config, which this tool has not.
    with open(path) as f:
      json.load(f)
  except FileNotFoundError:
    _fail(f"--workdir={workdir!r} has no config.json; name the workdir of a training run of "
          "this project (the loop writes config.json there).", 2)
  except ValueError as e:
    _fail(f"--workdir={workdir!r}: {path} is not valid JSON ({e}); the export reads the "
          "run's architecture from it.", 2)
  steps = []
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    reader = checkpoint.Checkpointer.reader(workdir)
    steps = reader.all_steps()
    reader.close()
  if not steps:
    _fail(f"--workdir={workdir!r} has no checkpoints yet; export it once the run has saved "
          "one.", 2)
  return run_config.read_saved(workdir), steps


def _torch_tensor(x: np.ndarray):
  """`x` as a torch tensor of its dtype. torch.from_numpy cannot take ml_dtypes' bfloat16:
  its bits go through as int16 and are viewed as torch.bfloat16 (exact, no copy)."""
  import torch
  if not x.flags.writeable:  # Restored arrays may be read-only; torch warns of those.
    x = x.copy()
  if x.dtype.name == "bfloat16":
    return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(x)


def _write(stage: str, files: dict, manifest: dict, pt: bool, tokenizer=None):
  """The export's files into the directory `stage`, export.json last."""
  from safetensors.numpy import save_file  # Writes ml_dtypes' bfloat16 as BF16.
  for stem, (state_dict, info) in files.items():
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    save_file(arrays, os.path.join(stage, f"{stem}.safetensors"),
              metadata={"big_contrast": json.dumps(info)})
    if pt:
      import torch
      torch.save({k: _torch_tensor(v) for k, v in arrays.items()},
                 os.path.join(stage, f"{stem}.pt"))
    manifest["files"][f"{stem}.safetensors"] = info
  if tokenizer is not None:
    manifest["tokenizer"] = export_tokenizer(tokenizer, stage)
  with open(os.path.join(stage, "export.json"), "w") as f:
    json.dump(manifest, f, indent=2)


def _listed(manifest_path: str) -> set:
  """The files the export described by `manifest_path` wrote (none if it is not one)."""
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
    stems = [name.removesuffix(".safetensors") for name in manifest["files"]]
    bpe = manifest.get("tokenizer", {}).get("kwargs", {}).get("bpe_path")
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return set()
  names = {stem + ext for stem in stems for ext in (".safetensors", ".pt")} | {bpe}
  return {n for n in names if n and os.path.basename(n) == n}


def _move_into_place(stage: str, out: str):
  """The complete export in `stage` moved to `out`: renamed where `out` is new. Into an
  existing `out`, the old export.json goes first and the new one last, so no moment shows
  new files under an old description; files only the old export wrote (a model.pt of an
  earlier --pt) are removed, anything else there is left alone."""
  if not os.path.exists(out):
    os.rename(stage, out)
    return
  old = os.path.join(out, "export.json")
  stale = _listed(old)
  if os.path.exists(old):
    os.remove(old)
  new = os.listdir(stage)
  for name in stale - set(new):
    if os.path.isfile(os.path.join(out, name)):
      os.remove(os.path.join(out, name))
  for name in sorted(new, key=lambda n: n == "export.json"):
    os.replace(os.path.join(stage, name), os.path.join(out, name))
  os.rmdir(stage)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="the training run's workdir")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--step", type=int, default=0, help="checkpoint step (0: the latest)")
  parser.add_argument("--part", choices=("auto", "image"), default="auto",
                      help="image: only the image tower of a two-tower model")
  parser.add_argument("--pt", action="store_true", help="also write torch .pt state dicts")
  args = parser.parse_args(argv)

  if os.path.exists(args.out) and not os.path.isdir(args.out):
    _fail(f"--out={args.out!r} is a file; name a directory.", 2)
  config, steps = _read_run(args.workdir)
  step = args.step or steps[-1]
  if step not in steps:
    _fail(f"--step={args.step} is not a checkpoint of {args.workdir}; its steps are {steps} "
          "(--step=0: the latest).", 2)
  try:
    flat = init_from.read_checkpoint(args.workdir, step)
    files = export_run(config, flat, args.part)
  except checkpoint.CorruptCheckpoint as e:
    _fail(f"CorruptCheckpoint: {e} Nothing was exported; "
          f"{checkpoint.earlier_step(steps, step, '--step')}.", 1)
  except ValueError as e:  # What the run's model or method cannot be exported as, and why.
    _fail(f"{type(e).__name__}: {e} Nothing was exported.", 1)

  manifest = {"source": os.path.abspath(args.workdir), "step": step,
              "method": config.method, "preprocessing": preprocessing(config), "files": {}}
  two_tower = methods.METHODS.get(config.method).export == "two_tower" and args.part == "auto"
  # Written beside --out and moved into place when complete: an export that fails (a dtype
  # torch refuses, a full disk, Ctrl-C) leaves no partial export that looks complete.
  out = os.path.abspath(args.out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=os.path.dirname(out))
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 would stay on OUT: as os.makedirs makes it.
  try:
    _write(stage, files, manifest, args.pt, config.text.tokenizer if two_tower else None)
    _move_into_place(stage, out)
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise
  for name, info in manifest["files"].items():
    print(f"{os.path.join(args.out, name)}: {info['constructor']} "
          f"{info.get('name', '')} ({info['output']})")


if __name__ == "__main__":
  main()
