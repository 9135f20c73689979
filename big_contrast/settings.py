"""Declared config settings: each module states the keys it reads, their defaults and checks.

A declaration is a nested dict {name: Setting | nested dict}. The training loop assembles the
run's declaration from the modules and the method it uses (big_contrast/run_config.py); from
it come the defaults a recipe starts from, the known keys (anything else is a typo) and the
value checks, so no list of keys or ranges is written twice.

    SETTINGS = {"every_steps": settings.integer(1000, low=0), "keep": settings.integer(3, low=1)}
"""
import dataclasses
import difflib
import re
from typing import Any, Callable

import ml_collections

# A check returns what is wrong with a value ("must be > 0") or None.
Check = Callable[[Any], "str | None"]


@dataclasses.dataclass(frozen=True)
class Setting:
  """One config key. `optional`: the key may be set but has no default in the config (code
  reads it with .get and a default of its own)."""
  default: Any = None
  check: Check | None = None
  optional: bool = False
  hint: str = ""  # The fix, appended to what the check says is wrong.


def optional(spec: "Setting | Check | None" = None) -> Setting:
  """A key without a default in the config, checked as `spec` (a Setting's check, or a check)."""
  check = spec.check if isinstance(spec, Setting) else spec
  hint = spec.hint if isinstance(spec, Setting) else ""
  return Setting(None, check, optional=True, hint=hint)


def _is_number(v, integer: bool) -> bool:
  if isinstance(v, bool):
    return False
  return isinstance(v, int) if integer else isinstance(v, (int, float))


def _range_check(integer: bool, low, high, low_open: bool) -> Check:
  kind = "an int" if integer else "a number"
  parts = []
  if low is not None:
    parts.append(f"{'>' if low_open else '>='} {low}")
  if high is not None:
    parts.append(f"<= {high}")
  want = f"must be {kind}" + (f" {' and '.join(parts)}" if parts else "")

  def check(v):
    if not _is_number(v, integer):
      return want
    if low is not None and (v <= low if low_open else v < low):
      return want
    if high is not None and v > high:
      return want
    return None
  return check


def integer(default, low=None, high=None, hint="") -> Setting:
  return Setting(default, _range_check(True, low, high, False), hint=hint)


def number(default, low=None, high=None, low_open=False, hint="") -> Setting:
  return Setting(default, _range_check(False, low, high, low_open), hint=hint)


def positive(default) -> Setting:
  """A number > 0 (learning rates, temperatures, epochs)."""
  return number(default, low=0, low_open=True)


def probability(default) -> Setting:
  """A number in [0, 1] (augmentation probabilities, thresholds, momenta)."""
  return number(default, low=0, high=1)


def widths(default) -> Setting:
  """A tuple of layer widths, each an int >= 1; () for none (an MLP's hidden layers)."""
  def check(v):
    if not isinstance(v, (tuple, list)) or not all(_is_number(d, True) and d >= 1 for d in v):
      return "must be a tuple of ints >= 1 (or () for no hidden layer)"
    return None
  return Setting(tuple(default), check)


def numbers(default, low=None, high=None, low_open=False, hint="") -> Setting:
  """A non-empty tuple of numbers, each as `number(low, high, low_open)` checks it (label
  fractions, epochs per fraction)."""
  each = _range_check(False, low, high, low_open)

  def check(v):
    if not isinstance(v, (tuple, list)) or not v:
      return "must be a non-empty tuple of numbers"
    problems = [f"holds {x!r}, which {each(x)}" for x in v if each(x)]
    return problems[0] if problems else None
  return Setting(tuple(default), check, hint=hint)


def regexes(default=(), pairs: bool = False) -> Setting:
  """A tuple of regular expressions, or with `pairs` of (regex, template) pairs as re.sub
  takes them; each is compiled by the check, so a bad one fails before anything runs."""
  want = ("must be a tuple of (regex, template) pairs of strings" if pairs else
          "must be a tuple of regex strings")

  def check(v):
    if not isinstance(v, (tuple, list)):
      return f"{want}, e.g. ({v!r},)" if isinstance(v, str) and not pairs else want
    for item in v:
      ok = (isinstance(item, (tuple, list)) and len(item) == 2 and
            all(isinstance(x, str) for x in item)) if pairs else isinstance(item, str)
      if not ok:
        return f"{want}; it holds {item!r}"
      pattern = item[0] if pairs else item
      try:
        re.compile(pattern)
      except re.error as e:
        return f"holds {pattern!r}, which is not a regular expression ({e})"
      if pairs and any(ord(c) < 32 for c in item[1]):
        # '\1' in a plain Python string is chr(1), not a reference to group 1.
        return (f"holds the template {item[1]!r}, which has a control character: write "
                "templates as raw strings, r'params/\\1' (in 'params/\\1' the \\1 is chr(1))")
    return None
  return Setting(tuple(default), check)


def _interval(low, high) -> Check:
  def check(v):
    if (not isinstance(v, (tuple, list)) or len(v) != 2 or
        not all(_is_number(x, False) for x in v) or not low <= v[0] <= v[1] <= high):
      return f"must be a pair (lo, hi) with {low} <= lo <= hi <= {high}"
    return None
  return check


def interval(default, low=0.0, high=float("inf")) -> Setting:
  """A (lo, hi) pair inside [low, high], lo <= hi (crop scales, blur sigmas)."""
  return Setting(tuple(default), _interval(low, high))


def overrides(spec: dict, section: str) -> Setting:
  """A tuple of dicts, each setting some keys of `spec` (the declaration of config.`section`),
  checked as `spec` checks them (per-view augmentation)."""
  declared = flatten(spec)

  def check(v):
    if not isinstance(v, (tuple, list)) or not all(hasattr(o, "items") for o in v):
      return f"must be a tuple of dicts of config.{section} keys"
    for i, entry in enumerate(v):
      for key, value in entry.items():
        if key not in declared:
          near = difflib.get_close_matches(key, declared, n=1, cutoff=0.6)
          return (f"entry {i} sets {key!r}, which is not a key of config.{section} (" +
                  (f"did you mean {near[0]!r}?)" if near else f"it has {tuple(declared)})"))
        s = declared[key]
        problem = s.check(value) if s.check is not None and value is not None else None
        if problem:
          return f"entry {i} sets {key}={value!r}, which {problem}"
    return None
  return Setting((), check)


def boolean(default: bool) -> Setting:
  return Setting(default, lambda v: None if isinstance(v, bool) else "must be True or False")


def choice(default, choices) -> Setting:
  choices = tuple(choices)
  return Setting(default, lambda v: None if v in choices else f"must be one of {choices}")


def flatten(spec: dict, prefix: str = "") -> dict:
  """{"a.b": Setting} of a declaration; a plain value declares a setting without a check."""
  out = {}
  for name, value in spec.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{name}."))
    else:
      out[f"{prefix}{name}"] = value if isinstance(value, Setting) else Setting(value)
  return out


def merge(*specs: dict) -> dict:
  """Declarations merged section by section; a later one wins on the same key."""
  out = {}
  for spec in specs:
    for name, value in spec.items():
      if isinstance(value, dict) and isinstance(out.get(name), dict):
        out[name] = merge(out[name], value)
      else:
        out[name] = value
  return out


def defaults(spec: dict) -> ml_collections.ConfigDict:
  """The ConfigDict of a declaration's defaults (optional settings left out)."""
  out = {}
  for name, value in spec.items():
    if isinstance(value, dict):
      out[name] = defaults(value)
    else:
      value = value if isinstance(value, Setting) else Setting(value)
      if not value.optional:
        out[name] = value.default
  return ml_collections.ConfigDict(out)


def check(flat_config: dict, spec: dict):
  """Raises ValueError on every value of `flat_config` ({"a.b": value}) its Setting refuses."""
  declared = flatten(spec)
  problems = []
  for key, value in flat_config.items():
    s = declared.get(key)
    if s is not None and s.check is not None and value is not None:
      problem = s.check(value)
      if problem:
        problems.append(f"config.{key}={value!r}: {problem}" +
                        (f"; {s.hint}." if s.hint else "."))
  if problems:
    raise ValueError("\n".join(problems))
