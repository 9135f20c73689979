"""Backbones and heads: shapes, stems, dtypes, and SyncBN semantics under sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_contrast import models


@pytest.mark.parametrize("depth, stem, size, feat", [
    (18, "cifar", 16, 4 * 8), (50, "imagenet", 32, 4 * 8 * 4)])
def test_resnet_feature_shape(depth, stem, size, feat):
  model = models.ResNet(depth=depth, width=4, stem=stem)
  x = jnp.zeros((2, size, size, 3))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  assert model.apply(variables, x, train=False).shape == (2, feat)
  assert set(variables) == {"params", "batch_stats"}


def test_resnet50_has_the_paper_parameter_count():
  model = models.ResNet(depth=50)
  shapes = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.PRNGKey(0),
                          jnp.zeros((1, 224, 224, 3)))
  n = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert n == 23_508_032  # torchvision resnet50 without its 2048x1000 fc layer.


def test_bfloat16_compute_keeps_float32_params():
  model = models.ResNet(depth=18, width=4, stem="cifar", dtype=jnp.bfloat16)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)), train=False)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


def test_mlp_head_last_bn():
  head = models.MLPHead((8,), 4, last_bn=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
  out, _ = head.apply(head.init(jax.random.PRNGKey(1), x), x, mutable=["batch_stats"])
  np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)
