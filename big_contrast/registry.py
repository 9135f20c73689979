"""Name -> object tables for the parts a config chooses by name (methods, evaluators, ...)."""
import difflib


class Registry:
  """Entries registered once under a unique name; looked up with errors naming the config key.

    METHODS = Registry("method", "config.method")

    @METHODS.register("simclr")
    class SimCLR(...): ...

    METHODS.get(config.method)  # ValueError naming the key, the choices and the nearest one
  """

  def __init__(self, what: str, key: str):
    self.what = what    # What an entry is, for messages: "method", "evaluator".
    self.key = key      # The config key that names one, for messages: "config.method".
    self._entries = {}

  def register(self, name: str, value=None):
    """`register(name, value)`, or `@register(name)` on a function or class."""
    def add(v):
      if name in self._entries:
        raise ValueError(f"{self.what} {name!r} is registered twice.")
      self._entries[name] = v
      return v
    return add if value is None else add(value)

  def get(self, name: str):
    if name not in self._entries:
      near = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6)
      hint = f" (did you mean {near[0]!r}?)" if near else ""
      raise ValueError(f"{self.key}={name!r} is not a known {self.what}{hint}; choose one of "
                       f"{self.names()}.")
    return self._entries[name]

  def names(self) -> list:
    return sorted(self._entries)

  def items(self):
    return sorted(self._entries.items())

  def __contains__(self, name) -> bool:
    return name in self._entries

  def __len__(self) -> int:
    return len(self._entries)
