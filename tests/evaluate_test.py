"""k-NN, linear probe and sharded feature extraction."""
import jax
import jax.numpy as jnp
import numpy as np

from big_contrast import evaluate
from big_contrast import sharding
from input_pipeline import digits


def _knn_reference(train_x, train_y, test_x, k, t, num_classes):
  train_x = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  test_x = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
  preds = []
  for q in test_x:
    sim = train_x @ q
    votes = np.zeros(num_classes)
    for i in np.argsort(-sim)[:k]:
      votes[train_y[i]] += np.exp(sim[i] / t)
    preds.append(np.argmax(votes))
  return np.array(preds)


def test_knn_matches_reference_including_a_partial_chunk():
  rng = np.random.default_rng(0)
  train_x, test_x = rng.normal(size=(200, 8)), rng.normal(size=(37, 8))
  train_y = rng.integers(0, 5, 200)
  pred = _knn_reference(train_x, train_y, test_x, 20, 0.07, 5)
  test_y = np.where(np.arange(37) % 3 == 0, pred, (pred + 1) % 5)  # 13 of 37 right.
  acc = evaluate.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=5, chunk=16)
  np.testing.assert_allclose(acc, 13 / 37, rtol=1e-6)


def test_linear_probe_separates_separable_classes_and_not_random_labels():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, 16)) * 4
  y = rng.integers(0, 4, 400)
  x = centers[y] + rng.normal(size=(400, 16))
  run = lambda labels: float(evaluate.linear_probe_accuracy(
      x[:300], labels[:300], x[300:], labels[300:], jax.random.PRNGKey(0), num_classes=4,
      epochs=30, batch_size=64))
  assert run(y) > 0.97
  assert run(rng.permutation(y)) < 0.5


def test_extract_on_8_devices_keeps_order_and_drops_padding():
  source = digits.source("test", image_size=8)          # 360 examples: the last batch is padded.
  mean_pixel = jax.jit(lambda x: jnp.mean(x.astype(jnp.float32), axis=(1, 2)))
  want = np.stack([source[i]["image"].mean((0, 1)) for i in range(len(source))])
  for n in (1, 8):
    mesh = sharding.make_mesh([("data", n)])
    feats, labels = evaluate.extract(mean_pixel, source, mesh, batch_size=64)
    np.testing.assert_allclose(feats, want, rtol=1e-6)
    np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(len(source))])
