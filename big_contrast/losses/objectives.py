"""Multi-view objectives by name: `config.loss.objective` of method poly_view.

Each is a pure loss(z, temperature) -> scalar over z of shape [M, N, D]: M views of the
N samples of the GLOBAL batch (embeddings need not be normalised). A new objective is one
function in a loss file with `@MULTI_VIEW.register("name")`; the method, config validation
and the README's list of choices pick it up from here.
"""
from big_contrast import registry

MULTI_VIEW = registry.Registry("multi-view objective", "config.loss.objective")
