"""The run's config, assembled from what each part declares: defaults, known keys, checks, resume.

A run reads the sections of RUN_SETTINGS (the loop, data, optimizer, checkpoints, sharding,
evaluation, initialisation) and those its method declares (`Method.settings()`: views,
augmentation, model, loss, its own section). `defaults(method)` is the config a recipe starts
from, so a run's config.json holds exactly the sections it uses. `check(config)` refuses keys
nothing reads (typos, or another method's keys) and values their declarations refuse;
`check_resume` compares a workdir's saved config with the one about to resume from it.
"""
import difflib
import json
import os

from absl import logging
import ml_collections

from big_contrast import checkpoint
from big_contrast import evaluate
from big_contrast import init_from
from big_contrast import metrics
from big_contrast import methods
from big_contrast import models
from big_contrast import optim
from big_contrast import settings
from big_contrast import sharding
from input_pipeline import sources

NONFINITE = ("error", "skip")

RUN_SETTINGS = dict(
    method="simclr",
    seed=settings.integer(0),
    batch_size=settings.integer(256, low=2, hint=(
        "a contrastive loss compares each example with the rest of its batch: use a larger batch")),
    num_epochs=settings.positive(100.0),
    total_steps=settings.integer(0, low=0),        # > 0 overrides num_epochs.
    # > 1: GradCache (big_contrast/grad_cache.py): the full batch's loss and gradient,
    # computed in this many micro-batches to bound activation memory.
    micro_batches=settings.integer(1, low=1),
    log_every_steps=settings.integer(50, low=1),
    # A step with a non-finite loss, gradient or metric is never applied or saved; then
    # "error": stop naming the step and metric; "skip": go on from the previous state, counted.
    nonfinite=settings.choice("error", NONFINITE),
    # With "skip": the run stops once more than this fraction of its total steps was skipped.
    nonfinite_max_fraction=settings.number(0.05, low=0.0, high=1.0),
    # Mesh axes and sizes; -1 takes all remaining devices. The batch is split over "data"
    # and "fsdp"; "tensor" splits transformer blocks (README "Scaling out").
    mesh=(("data", -1),),
    sharding=sharding.SETTINGS,
    data=sources.SETTINGS,
    optimizer=optim.SETTINGS,
    checkpoint=checkpoint.SETTINGS,
    init_from=init_from.SETTINGS,
    wandb=metrics.WANDB,
)

# What may change when a run resumes: how long it runs and how it is observed, laid out or
# fed, and where its data is mounted. Anything else changes what the checkpointed state means.
RESUMABLE = ("total_steps", "num_epochs", "log_every_steps", "eval", "checkpoint", "mesh",
             "sharding", "micro_batches", "data.num_workers", "data.data_dir", "data.path",
             "init_from", "nonfinite", "nonfinite_max_fraction", "wandb")


def declared(method: str) -> dict:
  """The declaration of every key a run of `method` reads."""
  cls = methods.METHODS.get(method)
  return settings.merge(RUN_SETTINGS, {"eval": evaluate.eval_settings(cls.data)},
                        cls.settings(), {"method": method})


def defaults(method: str) -> ml_collections.ConfigDict:
  """The default config of `method`: every key its run reads."""
  return settings.defaults(declared(method))


def _owners(key: str) -> list:
  """The methods that declare `key`."""
  return [name for name in methods.METHODS.names() if key in settings.flatten(declared(name))]


def unknown_key_message(key, known, method) -> str:
  """What is wrong with `key` (not in `known`) for a run of `method`, and the likely fix."""
  parent, _, leaf = key.rpartition(".")
  section = f"config.{parent}." if parent else "config."
  siblings = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent)
  near = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
  elsewhere = sorted(k for k in known if k.rpartition(".")[2] == leaf)
  owners = _owners(key)
  if owners:
    hint = (f"it is a key of method {' / '.join(owners)}, not of {method!r}; remove it "
            "(start from the recipe of the method you train).")
  elif near:
    hint = f"did you mean {section}{near[0]}?"
  elif elsewhere:  # E.g. optimizer.temperature for loss.temperature.
    hint = f"did you mean {' or '.join(f'config.{k}' for k in elsewhere)}?"
  else:
    hint = f"{section[:-1]} has {siblings}." if siblings else f"{section[:-1]} takes no keys."
  return f"config.{key} is not a config key of this run (a typo?); {hint}"


def flatten(config, prefix="") -> dict:
  """{"a.b.c": leaf} of a ConfigDict (or dict); sequences are leaves."""
  out = {}
  for k, v in config.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check(config):
  """Fails on anything wrong with `config` that is visible without data, mesh or compile."""
  method = config.get("method")
  methods.METHODS.get(method)
  spec = declared(method)
  known = settings.flatten(spec)
  flat = flatten(config)
  unknown = [k for k in flat if k not in known]
  if unknown:
    raise ValueError("\n".join(unknown_key_message(k, known, method) for k in unknown))
  settings.check(flat, spec)
  for tower, cfg in _vits(config):
    check_vit(config, tower, cfg)
  _check_combinations(config)
  if config.optimizer.name == "lars" and config.get("model", {}).get("scan_layers"):
    # optax.lars takes one trust ratio per array: a scanned stack would share one across
    # its layers, which the unrolled model does not.
    raise ValueError("config.optimizer.name='lars' with config.model.scan_layers=True would "
                     "scale all layers of a scanned stack by one trust ratio; set "
                     "config.model.scan_layers=False, or use adamw or lion.")
  _warn_unread(config)


def _check_combinations(config):
  """What each key allows alone but the run cannot do together."""
  for i, view in enumerate(config.get("augment_views", ())):
    if view.get("crop_size", config.augment.crop_size) != config.augment.crop_size:
      raise ValueError(
          f"config.augment_views[{i}].crop_size={view['crop_size']}: the views of a batch share "
          f"config.augment.crop_size={config.augment.crop_size} (they are stacked and encoded "
          "together); drop it, or use config.multicrop for smaller extra views (SwAV).")
  model = config.get("model", {})
  text = model.get("text", {}) if model.get("name") == "two_tower" else {}
  if text:
    _check_heads("model.text", "text", text.width, text.heads, "config.model.text.width")
  eps = config.optimizer.get("eps") or 1e-8
  if (model.get("param_dtype") == "float16" and config.optimizer.name == "adamw" and
      eps < 2**-14):
    raise ValueError(
        f"config.model.param_dtype='float16' with config.optimizer.name='adamw': its eps "
        f"{eps:g} is below float16's smallest normal number, so a parameter whose gradient is "
        "0 gets a 0/0 update and turns NaN at the first step. Set config.optimizer.eps=1e-4, "
        "or store parameters in 'float32' or 'bfloat16' (model.dtype='float16' computes in "
        "float16 either way).")


def _backbone(config) -> tuple:
  """(config key, section) of the run's image backbone."""
  model = config.get("model", {})
  if model.get("name") == "two_tower":
    return "model.image", model.get("image", {})
  return "model", model


def _vits(config) -> list:
  """[(config key, section)] of the run's ViT image backbone, if it has one."""
  key, model = _backbone(config)
  return [(key, model)] if model.get("name") == "vit" else []


def _warn_unread(config):
  """A ViT's keys on a ResNet backbone are declared (the name may change) but read by
  nothing: said, as they would otherwise be taken silently. A two-tower's image variant has
  a default, so only the keys that default to None are looked at."""
  key, model = _backbone(config)
  if model.get("name") != "resnet":
    return
  unread = [k for k in ("variant", "heads", "pool", "posemb")
            if model.get(k) is not None and not (key == "model.image" and k == "variant")]
  if unread:
    logging.warning("%s: read by a ViT only; config.%s.name='resnet' ignores %s.",
                    ", ".join(f"config.{key}.{k}={model[k]!r}" for k in unread), key,
                    "it" if len(unread) == 1 else "them")


def crop_sizes(config) -> dict:
  """{config key: side} of every image size the backbone sees: each view's crop, and SwAV's
  small crops. Evaluation images are brought to augment.crop_size (Method.eval_view), so
  data.image_size never reaches it."""
  sizes = {"augment.crop_size": config.augment.crop_size}
  for i, view in enumerate(config.get("augment_views", ())):
    if "crop_size" in view:
      sizes[f"augment_views[{i}].crop_size"] = view["crop_size"]
  multicrop = config.get("multicrop")
  if multicrop and multicrop.num_small:
    sizes["multicrop.crop_size"] = multicrop.crop_size
  return sizes


def check_vit(config, tower: str, cfg):
  """A ViT needs a variant, crops its patch divides (a strided patch conv silently drops the
  remainder) and a width its heads divide."""
  if not cfg.get("variant"):
    raise ValueError(f"config.{tower}.name='vit' needs config.{tower}.variant: set it to "
                     "SIZE/PATCH, e.g. 'S/16'.")
  name, _, patch = cfg.variant.partition("/")
  patch = int(patch)
  for key, size in crop_sizes(config).items():
    if size % patch:
      below, above = size - size % patch, size - size % patch + patch
      fits = f"{below} or {above}" if below else f"{above}"
      raise ValueError(
          f"config.{key}={size}: must be a multiple of the ViT patch size {patch} "
          f"(config.{tower}.variant={cfg.variant!r}), which drops the {size % patch} px left "
          f"over; use {fits}, or a variant whose patch divides {size}.")
  width, _, heads = models.VARIANTS[name]
  width, heads = cfg.get("width") or width, cfg.get("heads") or heads
  if (cfg.get("posemb") or "sincos2d") == "sincos2d" and width % 4:
    raise ValueError(f"config.{tower}.width={width}: must be a multiple of 4 for "
                     f"config.{tower}.posemb='sincos2d' (sine and cosine of both axes); use "
                     f"{width - width % 4 or 4} or {width - width % 4 + 4}, or posemb='learn'.")
  _check_heads(tower, "ViT", width, heads,
               f"config.{tower}.width or variant {cfg.variant!r}")


def _check_heads(section: str, tower: str, width: int, heads: int, width_from: str):
  """Attention heads must split the tower's width evenly."""
  if width % heads:
    fits = [h for h in range(1, min(width, 32) + 1) if width % h == 0]
    raise ValueError(f"config.{section}.heads={heads}: must divide the {tower} width {width} "
                     f"({width_from}); use one of {fits}.")


def _normalised(config) -> dict:
  """The flat config as config.json stores it (tuples as lists, dtypes as names)."""
  return flatten(json.loads(config.to_json_best_effort()))


def check_resume(saved_json: str, config, path: str):
  """Refuses to resume a run saved with a config that differs outside RESUMABLE.

  Only the keys this run's method reads are compared; a key absent on one side compares as
  its declared default. Workdirs written before each module declared its settings resume:
  the sections their config.json holds for other methods are not read, so not compared.
  """
  try:
    saved = flatten(json.loads(saved_json))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); restore it from a copy, or move it "
                     "away to resume without the config check.") from None
  now = _normalised(config)
  declared_keys = settings.flatten(declared(config.method))
  default = {k: json.loads(json.dumps(s.default)) for k, s in declared_keys.items()
             if not s.optional}
  resumable = lambda k: any(k == r or k.startswith(r + ".") for r in RESUMABLE)
  value = lambda flat, k: flat.get(k, default.get(k, "<absent>"))
  diffs = [f"  config.{k}: saved {value(saved, k)!r}, now {value(now, k)!r}"
           for k in sorted(declared_keys)
           if not resumable(k) and value(saved, k) != value(now, k)]
  if diffs:
    raise ValueError(
        f"The workdir's checkpoints were written by a run whose config ({path}) differs from "
        f"this one in what the checkpoint means:\n" + "\n".join(diffs) + "\nResume with the "
        "saved values, or start a new --workdir (config.init_from.workdir can load this "
        f"run's weights). Only {RESUMABLE} may change on resume.")


def _tuples(value):
  """JSON's lists back to the tuples recipes write (mesh, widths, evaluators, rules)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def read_saved(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in WORKDIR/config.json, as its recipe built it; keys declared
  since it was written (new evaluators' sections) get their defaults."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: --workdir must be a training run's workdir "
                     "(the loop writes config.json there), or give --config=RECIPE.")
  with open(path) as f:
    try:
      saved = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); give --config=RECIPE with the "
                       "run's settings instead.") from None
  saved = _tuples(saved)
  if saved.get("method") in methods.METHODS.names():  # Keys added since: their defaults.
    saved = _over(defaults(saved["method"]).to_dict(), saved)
  return ml_collections.ConfigDict(saved)


def _over(base: dict, top: dict) -> dict:
  """`top` laid over `base`, section by section."""
  return {**base, **{k: _over(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict)
                     else v for k, v in top.items()}}
