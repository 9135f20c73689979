"""Config validation that needs no data and no compile: typos, values, combinations, resume.

`check(config)` runs first in train.train_and_evaluate; the checks that need the data, the
mesh or the method (batch divisibility, evaluators, sharding rules, GradCache) run right
after it, still before anything compiles. `check_resume` compares a workdir's saved
config.json with the config that is about to resume from its checkpoints.
"""
import difflib
import json
import os

import ml_collections

from big_contrast import methods
from configs import common
from input_pipeline import image_text

NONFINITE = ("error", "skip")
IMAGE_TEXT_METHODS = tuple(k for k, v in methods.METHODS.items() if v is methods.ImageText)

# Keys a recipe may set beyond base_config()'s, which every recipe starts from. A two-tower's
# image tower takes the backbone keys, its text tower _TEXT_KEYS.
_BACKBONE_KEYS = ("name", "depth", "width", "stem", "variant", "heads", "pool", "posemb")
_TEXT_KEYS = ("width", "depth", "heads", "causal", "pool")
OPTIONAL_KEYS = frozenset(
    [f"model.{k}" for k in _BACKBONE_KEYS + ("embed_dim", "temperature_init", "bias_init")] +
    [f"model.image.{k}" for k in _BACKBONE_KEYS] + [f"model.text.{k}" for k in _TEXT_KEYS] +
    [f"optimizer.{k}" for k in ("b1", "b2", "eps", "trust_coefficient", "nesterov")] +
    ["text.tokenizer.lower", "text.tokenizer.num_merges"])

# What may change when a run resumes: how long it runs and how it is observed, laid out or
# fed. Anything else changes what the checkpointed state means.
RESUMABLE = ("total_steps", "num_epochs", "log_every_steps", "eval", "checkpoint", "mesh",
             "sharding", "micro_batches", "data.num_workers", "data.data_dir", "init_from",
             "nonfinite")

# key -> (int or float, lowest allowed value, whether the lowest itself is allowed). Only keys
# that nothing downstream checks with a better message.
_RANGES = {
    "batch_size": (int, 1, True), "total_steps": (int, 0, True), "num_epochs": (float, 0, False),
    "num_views": (int, 1, True), "micro_batches": (int, 1, True),
    "log_every_steps": (int, 1, True), "checkpoint.every_steps": (int, 0, True),
    "checkpoint.keep": (int, 1, True), "optimizer.lr": (float, 0, False),
    "optimizer.weight_decay": (float, 0, True), "optimizer.warmup_epochs": (float, 0, True),
    "loss.temperature": (float, 0, False), "swav.num_prototypes": (int, 1, True),
    "data.image_size": (int, 1, True), "augment.crop_size": (int, 1, True),
    "eval.every_steps": (int, 0, True),
}


def _in_range(v, kind, low, inclusive) -> bool:
  if isinstance(v, bool) or not isinstance(v, (int,) if kind is int else (int, float)):
    return False
  return v >= low if inclusive else v > low


def flatten(config, prefix="") -> dict:
  """{"a.b.c": leaf} of a ConfigDict (or dict); sequences are leaves."""
  out = {}
  for k, v in config.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def known_keys() -> set:
  return set(flatten(common.base_config())) | OPTIONAL_KEYS


def _unknown_key_message(key, known) -> str:
  parent, _, leaf = key.rpartition(".")
  section = f"config.{parent}." if parent else "config."
  siblings = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent)
  near = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
  elsewhere = sorted(k for k in known if k.rpartition(".")[2] == leaf)
  if near:
    hint = f"did you mean {section}{near[0]}?"
  elif elsewhere:  # E.g. optimizer.temperature for loss.temperature.
    hint = f"did you mean config.{elsewhere[0]}?"
  else:
    hint = f"{section[:-1]} has {siblings}." if siblings else f"{section[:-1]} takes no keys."
  return f"config.{key} is not a config key (a typo?); {hint}"


def check_keys(config):
  """Every key is one the code reads: a typo would otherwise be silently ignored."""
  known = known_keys()
  unknown = [k for k in flatten(config) if k not in known]
  if unknown:
    raise ValueError("\n".join(_unknown_key_message(k, known) for k in unknown))


def check(config):
  """Fails on anything wrong with `config` that is visible without data, mesh or method."""
  check_keys(config)
  flat = flatten(config)
  for key, (kind, low, inclusive) in _RANGES.items():
    if key in flat and not _in_range(flat[key], kind, low, inclusive):
      raise ValueError(f"config.{key}={flat[key]!r}: must be "
                       f"{'an int' if kind is int else 'a number'} {'>=' if inclusive else '>'} "
                       f"{low}.")
  if config.get("nonfinite", "error") not in NONFINITE:
    raise ValueError(f"config.nonfinite={config.nonfinite!r}: must be one of {NONFINITE}.")
  image_text_data = config.data.name in image_text.DATASETS
  if config.method in IMAGE_TEXT_METHODS and not image_text_data:
    raise ValueError(f"config.method={config.method!r} trains on image-text pairs but "
                     f"config.data.name={config.data.name!r} has no captions; use one of "
                     f"{image_text.DATASETS}.")
  if config.method not in IMAGE_TEXT_METHODS and config.num_views < 2:
    raise ValueError(f"config.num_views={config.num_views}: {config.method} contrasts views "
                     "of the same image and needs at least 2.")
  data_dir = config.data.get("data_dir")
  if config.data.name.startswith("tfds") and data_dir and not os.path.isdir(data_dir):
    raise ValueError(f"config.data.data_dir={data_dir!r} does not exist; point it at the "
                     "directory `tfds build --data_dir=...` prepared (README, Data).")


def _normalised(config) -> dict:
  """The flat config as config.json stores it (tuples as lists, dtypes as names)."""
  return flatten(json.loads(config.to_json_best_effort()))


def check_resume(saved_json: str, config, path: str):
  """Refuses to resume a run saved with a config that differs outside RESUMABLE."""
  saved = flatten(json.loads(saved_json))
  now = _normalised(config)
  resumable = lambda k: any(k == r or k.startswith(r + ".") for r in RESUMABLE)
  diffs = [f"  config.{k}: saved {saved.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r}"
           for k in sorted(set(saved) | set(now))
           if not resumable(k) and saved.get(k, "<absent>") != now.get(k, "<absent>")]
  if diffs:
    raise ValueError(
        f"The workdir's checkpoints were written by a run whose config ({path}) differs from "
        f"this one in what the checkpoint means:\n" + "\n".join(diffs) + "\nResume with the "
        "saved values, or start a new --workdir (config.init_from.workdir can load this "
        f"run's weights). Only {RESUMABLE} may change on resume.")
