"""The training loop end to end on tiny models: sharding, logs, the CLI.

Resume, preemption and config errors: reliability_test.py."""
import json
import os
import re
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
  (train_x, train_y), (test_x, test_y) = ctx.features("train").gather(), ctx.features(
      "test").gather()
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
  # The console: this project's lines without absl's prefix, no library chatter.
  console = out.stderr.splitlines()
  assert not [l for l in console if re.match(r"[IWEF]\d{4} ", l)], out.stderr[-3000:]
  assert not [l for l in console if "orbax" in l.lower() or "backend" in l], out.stderr[-3000:]
  assert any(l.startswith("step 1/3  ") and "loss=" in l for l in console), out.stderr[-3000:]
  assert "orbax" in (tmp_path / "log.txt").read_text()  # The log file keeps everything.
  assert "linear_probe_top1=" in out.stdout and str(tmp_path) in out.stdout
  rows = _read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


def test_summary_of_a_resumed_run_covers_every_session():
  from big_contrast import main as main_lib
  text = main_lib.summary(dict(step=500, wall_time_s=600.0, session=dict(steps=200,
                               wall_time_s=240.0), init={"eval/knn_top1": 0.5},
                               final={"eval/knn_top1": 0.9}, checkpoint_dir="c",
                               metrics_file="m", tensorboard_dir="t"))
  assert text.splitlines()[0] == ("Finished 500 steps in 10.0 min over every session; this one "
                                  "resumed at step 300 and ran 200 steps in 4.0 min.")
  assert "random init  knn_top1=0.5000" in text and "trained      knn_top1=0.9000" in text


def test_a_host_without_tpu_chips_does_not_load_libtpu():
  """jax[tpu] (installed for ahead-of-time compiles) otherwise prints libtpu's failed search
  for chips on every CPU or GPU host."""
  code = ("from big_contrast import console; console.skip_absent_tpu(); import jax; "
          "print(jax.default_backend())")
  env = {k: v for k, v in subprocess_env(1).items() if k != "JAX_PLATFORMS"}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "cpu", out.stderr
  assert "TPU" not in out.stderr and "tpu" not in out.stderr, out.stderr


def _wandb_history(workdir):
  """({"step" field: logged values}, run ids) of the offline W&B run files in `workdir`
  (LevelDB-style logs: a 7-byte file header, 32 KiB blocks of records with 7-byte headers)."""
  import glob
  import struct
  from wandb.proto import wandb_internal_pb2
  rows, ids = {}, set()
  for path in glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb")):
    ids.add(os.path.basename(path)[4:-6])
    data, pos, buf = open(path, "rb").read(), 7, b""
    while pos + 7 <= len(data):
      if 32768 - pos % 32768 < 7:  # A block's tail too short for a header is padding.
        pos += 32768 - pos % 32768
        continue
      length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
      buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
      if kind in (1, 4):  # A whole record, or the last piece of one.
        record = wandb_internal_pb2.Record.FromString(buf)
        buf = b""
        if record.WhichOneof("record_type") == "history":
          items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                   for i in record.history.item}
          if "step" in items:
            rows.setdefault(items.pop("step"), {}).update(items)
  return rows, ids


def test_weights_and_biases_offline_logs_the_run_and_continues_it_on_resume(tmp_path):
  c = tiny_config(total_steps=2, mesh=[("data", 1)],
                  **{"eval.evaluators": ("knn",), "wandb.enabled": True})
  first = train.train_and_evaluate(c, str(tmp_path))
  c.total_steps = 3
  train.train_and_evaluate(c, str(tmp_path))
  rows, ids = _wandb_history(str(tmp_path))
  assert ids == {(tmp_path / "wandb_id").read_text()}  # Both sessions: one W&B run.
  assert sorted(rows) == [1, 2, 3] and all("loss" in rows[s] for s in rows)
  assert rows[2]["eval/knn_top1"] == first["final"]["eval/knn_top1"]
