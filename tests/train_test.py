"""The training loop end to end on tiny models: sharding, logs, the CLI.

Resume, preemption and config errors: reliability_test.py."""
import json
import os
import subprocess
import sys

import jax
import numpy as np

from big_contrast import evaluate
from big_contrast import run as run_lib
from big_contrast import train
from conftest import assert_fraction_of_test_split
from conftest import subprocess_env
from conftest import tiny_config


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _assert_trees_close(a, b, **tol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=str(path), **tol)


def test_sharded_run_equals_single_device(tmp_path):
  """Same global batch on 8 devices as on 1: params and BatchNorm statistics agree."""
  runs = {}
  for n in (1, 8):
    runs[n] = train.train_and_evaluate(tiny_config(mesh=[("data", n)], total_steps=2,
                                                   **{"eval.evaluators": ()}),
                                       str(tmp_path / f"mesh{n}"))["train_state"]
  _assert_trees_close(runs[1]["state"], runs[8]["state"], rtol=1e-4, atol=1e-5)
  _assert_trees_close(runs[1]["params"], runs[8]["params"], rtol=1e-4, atol=1e-5)
  assert runs[8]["params"]["backbone"]["stem_conv"]["kernel"].sharding.num_devices == 8


def test_loss_decreases_and_logs_are_written(tmp_path):
  c = tiny_config(total_steps=30, mesh=[("data", 1)])
  c.optimizer.lr = 1e-2
  c.augment.update(color_jitter_prob=0.0, blur_prob=0.0, grayscale_prob=0.0)
  results = train.train_and_evaluate(c, str(tmp_path))
  rows = _read_jsonl(results["metrics_file"])
  loss = [r["loss"] for r in rows if "loss" in r]
  assert len(loss) == 30
  assert np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.1, loss
  assert {"eval/knn_top1", "eval/linear_probe_top1"} <= set(rows[-1])
  # The logged k-NN accuracy is the one of the final state's features, computed afresh.
  run = run_lib.setup(c)
  ctx = evaluate.Context(run, results["train_state"])
  (train_x, train_y), (test_x, test_y) = ctx.features("train"), ctx.features("test")
  assert len(test_y) == 360 and len(train_y) == 1437
  want = evaluate.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=10,
                               k=c.eval.knn.k, temperature=c.eval.knn.temperature)
  np.testing.assert_allclose(results["final"]["eval/knn_top1"], want, atol=1e-6)
  assert_fraction_of_test_split(results["final"]["eval/knn_top1"])
  assert os.listdir(results["tensorboard_dir"])


def test_cli_overrides_train_and_print_summary(tmp_path):
  """`python -m big_contrast.main` with command-line overrides, as a user runs it."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = ["--config=configs/simclr_digits.py", f"--workdir={tmp_path}",
          "--config.batch_size=32", "--config.total_steps=3", "--config.log_every_steps=1", "--config.optimizer.name=lion",
          "--config.optimizer.lr=1e-4", "--config.model.width=4", "--config.data.image_size=8",
          "--config.augment.crop_size=8", "--config.eval.at_start=False",
          "--config.eval.linear_probe.epochs=2", "--config.mesh=(('data',1),)"]
  env = subprocess_env(1)
  out = subprocess.run([sys.executable, "-m", "big_contrast.main", *args], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Finished 3 steps" in out.stdout
  assert "linear_probe_top1=" in out.stdout and str(tmp_path) in out.stdout
  rows = _read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
