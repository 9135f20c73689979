"""Methods: how a batch of images becomes a loss. One file per method."""
from big_contrast.methods.base import Method
from big_contrast.methods.base import Schedule
from big_contrast.methods.image_text import ImageText
from big_contrast.methods.moco import MoCo
from big_contrast.methods.poly_view import PolyView
from big_contrast.methods.simclr import SimCLR
from big_contrast.methods.swav import SwAV

METHODS = {"simclr": SimCLR, "moco": MoCo, "swav": SwAV, "poly_view": PolyView,
           "clip": ImageText, "siglip": ImageText}


def check(config):
  """Fails fast, before data or compile, on an unknown method."""
  if config.method not in METHODS:
    raise ValueError(f"config.method={config.method!r} is unknown; choose one of "
                     f"{sorted(METHODS)}.")


def get(config, schedule: Schedule) -> Method:
  check(config)
  return METHODS[config.method](config, schedule)
