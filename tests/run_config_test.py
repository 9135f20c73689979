"""The run's config from declared settings: defaults, known keys, checks, old workdirs."""
import glob
import importlib
import json
import os

import pytest

from big_contrast import methods
from big_contrast import run_config
from big_contrast import settings
from conftest import tiny_config

DATA = os.path.join(os.path.dirname(__file__), "data")
RECIPES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), "..", "configs", "*.py"))
    if not p.endswith(("__init__.py", "common.py")))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_passes_the_checks_and_holds_only_its_methods_keys(recipe):
  c = importlib.import_module(f"configs.{recipe}").get_config()
  run_config.check(c)
  declared = settings.flatten(run_config.declared(c.method))
  assert set(run_config.flatten(c)) <= set(declared)
  others = {"moco", "swav", "nnclr", "text", "multicrop"} - {
      k.split(".")[0] for k in declared}
  assert not others & set(c), f"{recipe} holds sections of other methods: {others & set(c)}"
  # --config.model.KEY overrides a key only where the recipe has it: a recipe that replaces
  # its model section (a ViT, a two-tower) keeps every declared key but the backbone's.
  from big_contrast import models
  model_keys = {k.split(".")[1] for k in declared if k.startswith("model.")} - set(
      models.BACKBONE_SETTINGS) - {"image", "text"}
  assert model_keys <= set(c.model), f"{recipe} lacks model keys {model_keys - set(c.model)}"


def test_defaults_hold_each_methods_own_sections():
  sections = {m: set(run_config.defaults(m)) for m in methods.METHODS.names()}
  assert "moco" in sections["moco"] and "moco" not in sections["simclr"]
  assert "swav" in sections["swav"] and "multicrop" in sections["swav"]
  assert "multicrop" not in sections["moco"] and "multicrop" not in sections["nnclr"]
  assert "text" in sections["clip"] and "text" not in sections["simclr"]
  assert run_config.defaults("clip").loss.to_dict() == {"max_scale": 100.0}
  assert run_config.defaults("siglip").loss.impl == "full"
  assert set(run_config.defaults("poly_view").loss) == {"temperature", "objective"}
  assert set(run_config.defaults("simclr").eval) == {
      "every_steps", "at_start", "batch_size", "evaluators", "knn", "linear_probe",
      "linear_eval", "finetune"}
  assert "zero_shot" in run_config.defaults("clip").eval
  assert "predictor_hidden_dims" in run_config.defaults("nnclr").model
  assert "predictor_hidden_dims" not in run_config.defaults("simclr").model


def test_the_library_never_imports_configs():
  root = os.path.join(os.path.dirname(__file__), "..")
  for path in glob.glob(os.path.join(root, "big_contrast", "**", "*.py"), recursive=True):
    with open(path) as f:
      source = f.read()
    assert "from configs" not in source and "import configs" not in source, path


def test_settings_checks_name_the_key_and_the_rule():
  spec = {"a": settings.integer(1, low=1), "b": {"p": settings.probability(0.5)},
          "c": settings.choice("x", ("x", "y")), "d": settings.interval((0.1, 1.0), 0, 1),
          "e": settings.optional(settings.boolean(None))}
  assert settings.defaults(spec).to_dict() == {"a": 1, "b": {"p": 0.5}, "c": "x",
                                               "d": (0.1, 1.0)}
  settings.check({"a": 3, "b.p": 1.0, "c": "y", "d": (0.0, 0.0), "e": True}, spec)
  for flat, message in [({"a": 0}, "config.a=0: must be an int >= 1"),
                        ({"a": 1.5}, "config.a=1.5: must be an int >= 1"),
                        ({"a": True}, "must be an int"),
                        ({"b.p": 1.01}, "config.b.p=1.01: must be a number >= 0 and <= 1"),
                        ({"c": "z"}, "config.c='z': must be one of ('x', 'y')"),
                        ({"d": (0.5, 0.2)}, "must be a pair (lo, hi) with 0 <= lo <= hi <= 1"),
                        ({"d": (0.5,)}, "must be a pair"),
                        ({"e": 1}, "config.e=1: must be True or False")]:
    with pytest.raises(ValueError) as e:
      settings.check(flat, spec)
    assert message in str(e.value)


def test_regex_settings_compile_each_pattern_and_frozen_ones_must_match():
  spec = {"f": settings.regexes(), "r": settings.regexes(pairs=True)}
  settings.check({"f": (r"image/.*",), "r": ((r"params/(.*)", r"params/\1"),)}, spec)
  for flat, message in [({"f": "image/.*"}, "must be a tuple of regex strings, e.g. ('image/.*',)"),
                        ({"f": ("backbone/(",)}, "holds 'backbone/(', which is not a regular "
                                                 "expression (missing ), unterminated subpattern"),
                        ({"r": ("foo",)}, "must be a tuple of (regex, template) pairs of strings; "
                                          "it holds 'foo'"),
                        ({"r": (("params/(.*", "x"),)}, "which is not a regular expression"),
                        # '\1' in a plain string (a shell's double quotes eat one backslash).
                        ({"r": (("params/(.*)", "params/\1"),)},
                         "holds the template 'params/\\x01', which has a control character: "
                         "write templates as raw strings, r'params/\\1'")]:
    with pytest.raises(ValueError) as e:
      settings.check(flat, spec)
    assert message in str(e.value), str(e.value)
  with pytest.raises(ValueError, match=r"config.init_from.rules='foo': must be a tuple of "
                     r"\(regex, template\) pairs"):
    settings.check({"init_from.rules": "foo"}, run_config.declared("clip"))
  from big_contrast import run as run_lib
  with pytest.raises(ValueError, match=r"config.optimizer.frozen holds 'backbon/.\*', which "
                     r"matches no parameter path in full; they look like \['backbone/"):
    run_lib.setup(tiny_config(**{"optimizer.frozen": (r"backbon/.*",)}))


def test_settings_widths_overrides_and_hints():
  spec = {"dims": settings.widths((8,)), "n": settings.integer(2, low=2, hint="use more"),
          "views": settings.overrides({"prob": settings.probability(0.5), "k": 1}, "sec")}
  assert settings.defaults(spec).to_dict() == {"dims": (8,), "n": 2, "views": ()}
  settings.check({"dims": (), "n": 3, "views": ({"prob": 1.0}, {"k": 5})}, spec)
  for flat, message in [
      ({"dims": (4, 0)}, "config.dims=(4, 0): must be a tuple of ints >= 1"),
      ({"dims": 4}, "must be a tuple of ints >= 1"),
      ({"n": 1}, "config.n=1: must be an int >= 2; use more."),
      ({"views": ({"prob": 2.0},)}, "entry 0 sets prob=2.0, which must be a number >= 0 and "
                                    "<= 1."),
      ({"views": ({}, {"prb": 1})}, "entry 1 sets 'prb', which is not a key of config.sec (did "
                                    "you mean 'prob'?)."),
      ({"views": ({"zzz": 1},)}, "(it has ('prob', 'k'))."),
      ({"views": (1,)}, "must be a tuple of dicts of config.sec keys.")]:
    with pytest.raises(ValueError) as e:
      settings.check(flat, spec)
    assert message in str(e.value)


def test_merge_updates_sections_and_later_wins():
  merged = settings.merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3, "z": 4}, "b": 2})
  assert merged == {"a": {"x": 1, "y": 3, "z": 4}, "b": 2}


def _saved(config) -> str:
  return config.to_json_best_effort()


def test_resume_compares_what_the_method_reads():
  c = tiny_config()
  run_config.check_resume(_saved(c), c, "config.json")
  changed = tiny_config(**{"model.width": 8})
  with pytest.raises(ValueError, match=r"config.model.width: saved 4, now 8"):
    run_config.check_resume(_saved(c), changed, "config.json")
  # Evaluation, run length and layout may change.
  run_config.check_resume(_saved(c), tiny_config(**{"eval.knn.k": 5, "total_steps": 9}),
                          "config.json")
  # A key absent from the saved file compares as its declared default.
  saved = json.loads(_saved(c))
  del saved["loss"]["decoupled"]
  run_config.check_resume(json.dumps(saved), c, "config.json")
  with pytest.raises(ValueError, match=r"config.loss.decoupled: saved False, now True"):
    run_config.check_resume(json.dumps(saved), tiny_config(**{"loss.decoupled": True}),
                            "config.json")


def test_a_config_json_written_before_declared_settings_still_resumes():
  """The saved file of a tiny SimCLR run made with the code before each module declared its
  settings: every method's sections, the old flat evaluator keys."""
  with open(os.path.join(DATA, "pre_settings_simclr_tiny_config.json")) as f:
    saved = f.read()
  old = json.loads(saved)
  assert "moco" in old and "knn_k" in old["eval"] and "impl" in old["loss"]
  now = lambda **kw: tiny_config(**{"model.depth": 18, **kw})  # Saved at ResNet-18.
  run_config.check_resume(saved, now(), "config.json")
  with pytest.raises(ValueError, match=r"config.loss.temperature: saved 0.2, now 0.5"):
    run_config.check_resume(saved, now(**{"loss.temperature": 0.5}), "config.json")


def test_a_torn_config_json_is_named():
  with pytest.raises(ValueError, match=r"WORKDIR/config.json is not valid JSON"):
    run_config.check_resume('{"method": "sim', tiny_config(), "WORKDIR/config.json")


def test_a_vits_keys_on_a_resnet_are_said_to_be_ignored(caplog):
  import logging
  with caplog.at_level(logging.WARNING, logger="absl"):
    run_config.check(tiny_config(**{"model.heads": 4, "model.pool": "gap"}))
  assert ("config.model.heads=4, config.model.pool='gap': read by a ViT only; "
          "config.model.name='resnet' ignores them.") in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="absl"):
    run_config.check(tiny_config())
  assert "read by a ViT only" not in caplog.text
