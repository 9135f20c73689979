"""Methods: how a batch of images becomes a loss. One file per method, registered by name.

A new method is a module with `@base.register("name")` on its Method class and one import
line here; the run, config validation and the tools find it in `METHODS`.
"""
from big_contrast.methods.base import METHODS
from big_contrast.methods.base import Method
from big_contrast.methods.base import Schedule
from big_contrast.methods.image_text import CLIP
from big_contrast.methods.image_text import ImageText
from big_contrast.methods.image_text import SigLIP
from big_contrast.methods.moco import MoCo
from big_contrast.methods.nnclr import NNCLR
from big_contrast.methods.poly_view import PolyView
from big_contrast.methods.simclr import SimCLR
from big_contrast.methods.swav import SwAV
