"""Methods: how a batch of images becomes a loss. One file per method."""
from big_contrast.methods.base import Method
from big_contrast.methods.simclr import SimCLR

METHODS = {"simclr": SimCLR}


def get(config) -> Method:
  if config.method not in METHODS:
    raise ValueError(f"config.method={config.method!r} is unknown; choose one of "
                     f"{sorted(METHODS)}.")
  return METHODS[config.method](config)
