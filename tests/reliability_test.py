"""Preemption, kills, non-finite steps, corrupt checkpoints and bad configs: nothing is lost,
nothing is silently wrong."""
import glob
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from big_contrast import checkpoint
from big_contrast import main as main_lib
from big_contrast import metrics
from big_contrast import run as run_lib
from big_contrast import train
from big_contrast.methods import simclr
from conftest import subprocess_env
from conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_DEVICE = [("data", 1)]


def _restore(workdir, step=None) -> dict:
  """{path: numpy array} of a checkpoint's whole train state (any mesh it was saved on)."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    step = step or manager.latest_step()
    target = jax.tree.map(
        lambda m: ocp.RestoreArgs(restore_type=np.ndarray) if hasattr(m, "shape") else None,
        manager.item_metadata(step))
    tree = manager.restore(step, args=ocp.args.PyTreeRestore(restore_args=target))
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_identical(a: dict, b: dict):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


# --- preemption and kills: the CLI in subprocesses, as a cluster runs it -------------------

# MoCo: its queue, queue position and momentum encoder must come back too.
CLI_ARGS = ["--config=configs/moco_v2_digits.py", "--config.batch_size=32",
            "--config.moco.queue_size=64", "--config.moco.bn_groups=2",
            "--config.total_steps=10", "--config.log_every_steps=1",
            "--config.checkpoint.every_steps=1", "--config.checkpoint.keep=2",
            "--config.model.width=4", "--config.model.depth=10", "--config.data.image_size=8",
            "--config.augment.crop_size=8", "--config.eval.at_start=False",
            "--config.eval.evaluators=()", "--config.mesh=(('data',1),)"]
ENV = subprocess_env(1)


def _cli(workdir):
  return subprocess.Popen([sys.executable, "-m", "big_contrast.main", *CLI_ARGS,
                           f"--workdir={workdir}"], cwd=ROOT, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _signal_at(workdir, sig, at_step):
  """Starts the CLI, sends `sig` once checkpoint `at_step` exists (the process is then
  anywhere in its next steps or saves); returns (returncode, stdout)."""
  proc = _cli(workdir)
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline:
    if _steps(workdir) and max(_steps(workdir)) >= at_step:
      proc.send_signal(sig)
      break
    time.sleep(0.02)
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out + err


@pytest.fixture(name="uninterrupted", scope="module")
def uninterrupted_fixture(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  proc = _cli(workdir)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return _restore(workdir)


def test_sigkill_and_sigterm_then_resume_is_bit_identical(tmp_path, uninterrupted):
  """Killed with SIGKILL three times at random steps (mid-step or mid-save), then preempted
  with SIGTERM (the step finishes, its checkpoint is written, exit 0), then run to the end:
  the final train state (parameters, optimizer state, MoCo's key encoder and queue) equals
  the uninterrupted run's bit for bit."""
  workdir = str(tmp_path / "killed")
  rng = random.Random(0)
  for at_step in sorted(rng.sample(range(1, 8), 3)):
    code, out = _signal_at(workdir, signal.SIGKILL, at_step)
    assert code == -signal.SIGKILL, out[-3000:]
    assert not glob.glob(os.path.join(workdir, "checkpoints_corrupt", "*"))
  code, out = _signal_at(workdir, signal.SIGTERM, 8)
  assert code == 0, out[-3000:]
  assert "Stopped by SIGTERM at step" in out
  stopped = int(out.split("Stopped by SIGTERM at step ")[1].split()[0])
  assert 8 <= stopped <= 10 and max(_steps(workdir)) == stopped  # Its own checkpoint.
  proc = _cli(workdir)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  if stopped < 10:
    assert f"Resumed from {os.path.join(workdir, 'checkpoints')} at step {stopped}" in err
  assert "Finished 10 steps" in out
  _assert_identical(_restore(workdir), uninterrupted)
  # Saves cut short by a kill left temporary directories; the next start removed them.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "9"]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "loss" in r] == list(range(1, 11))


def test_sigint_in_process_stops_with_a_checkpoint_between_periodic_ones(tmp_path,
                                                                         monkeypatch):
  """In-process (a library user, a notebook): the signal lands mid-run; the step finishes,
  a checkpoint is forced although none was due, and the handlers are restored."""
  progress = metrics.MetricLogger.progress

  def progress_then_signal(self, step, *args, **kw):
    progress(self, step, *args, **kw)
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)
  monkeypatch.setattr(metrics.MetricLogger, "progress", progress_then_signal)
  before = signal.getsignal(signal.SIGINT)
  c = tiny_config(total_steps=8, mesh=ONE_DEVICE,
                  **{"checkpoint.every_steps": 5, "eval.evaluators": ()})
  results = train.train_and_evaluate(c, str(tmp_path))
  # Signalled after step 3 was logged: the step in flight (4) completes and is saved.
  assert results["preempted"] == "SIGINT" and results["step"] == 4
  assert "final" not in results and _steps(str(tmp_path)) == [4]
  assert signal.getsignal(signal.SIGINT) is before


# --- non-finite steps ----------------------------------------------------------------------

def _nan_at(monkeypatch, bad_step):
  """SimCLR's loss becomes NaN at step `bad_step` (1-based, as logged)."""
  loss = simclr.SimCLR.loss

  def nan_loss(self, params, state, batch, rng, step):
    value, aux = loss(self, params, state, batch, rng, step)
    return value * jnp.where(step + 1 == bad_step, jnp.nan, 1.0), aux
  monkeypatch.setattr(simclr.SimCLR, "loss", nan_loss)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path,
                                                                          monkeypatch):
  _nan_at(monkeypatch, 3)
  c = tiny_config(total_steps=4, mesh=ONE_DEVICE,
                  **{"checkpoint.every_steps": 2, "eval.evaluators": ()})
  with pytest.raises(train.NonFiniteError, match=r"Step 3: non-finite loss, grad_norm .*"
                     r"the last checkpoint \(step 2\) is untouched.*config.nonfinite='skip'"):
    train.train_and_evaluate(c, str(tmp_path))
  assert _steps(str(tmp_path)) == [2]
  saved = _restore(str(tmp_path))
  assert all(np.isfinite(x).all() for x in saved.values())
  c.checkpoint.every_steps = 0  # Only at the end: none yet at step 3.
  with pytest.raises(train.NonFiniteError, match=r"Step 3: .* Nothing from this step was "
                     r"applied or saved; no checkpoint was written yet\. Lower"):
    train.train_and_evaluate(c, str(tmp_path / "early"))


def test_nonfinite_steps_can_be_skipped_and_are_counted(tmp_path, monkeypatch):
  _nan_at(monkeypatch, 3)
  c = tiny_config(total_steps=4, nonfinite="skip", nonfinite_max_fraction=0.25,
                  mesh=ONE_DEVICE, **{"checkpoint.every_steps": 1, "checkpoint.keep": 5,
                                      "eval.evaluators": ()})
  results = train.train_and_evaluate(c, str(tmp_path))
  assert results["step"] == 4 and results["nonfinite_steps"] == 1
  assert "skipped      1 of 4 steps had a non-finite" in main_lib.summary(results)
  # Step 3 changed nothing but the step and the count.
  two, three = _restore(str(tmp_path), 2), _restore(str(tmp_path), 3)
  for k in two:
    if k in ("['step']", "['nonfinite_steps']"):
      assert three[k] == two[k] + 1
    else:
      np.testing.assert_array_equal(three[k], two[k], err_msg=k)
  assert all(np.isfinite(x).all() for x in _restore(str(tmp_path), 4).values())
  rows = [json.loads(line) for line in open(results["metrics_file"])]
  assert [r["nonfinite_steps"] for r in rows if "loss" in r] == [0, 0, 1, 1]


def test_skipping_stops_when_more_than_the_allowed_fraction_of_steps_is_skipped(tmp_path,
                                                                                monkeypatch):
  loss = simclr.SimCLR.loss

  def nan_from_step_2(self, params, state, batch, rng, step):
    value, aux = loss(self, params, state, batch, rng, step)
    return value * jnp.where(step + 1 >= 2, jnp.nan, 1.0), aux
  monkeypatch.setattr(simclr.SimCLR, "loss", nan_from_step_2)
  c = tiny_config(total_steps=8, nonfinite="skip", nonfinite_max_fraction=0.25,
                  mesh=ONE_DEVICE, log_every_steps=1, **{"checkpoint.every_steps": 1,
                                                         "eval.evaluators": ()})
  with pytest.raises(train.NonFiniteError, match=r"Step 4: 3 steps were skipped as "
                     r"non-finite, more than config.nonfinite_max_fraction=0.25 of the run's "
                     r"8 steps.*last checkpoint \(step 3\) is kept"):
    train.train_and_evaluate(c, str(tmp_path))


def test_an_update_that_makes_parameters_nonfinite_is_not_applied(tmp_path, monkeypatch):
  # Finite loss and gradients, NaN parameters: an optimizer's own 0/0 in float16 storage is
  # caught as a non-finite step, not checkpointed.
  import optax
  from big_contrast import optim
  make = optim.make

  def nan_updates(*args, **kw):
    tx, lr = make(*args, **kw)
    return optax.chain(tx, optax.stateless(lambda u, _: jax.tree.map(lambda x: x * jnp.nan,
                                                                      u))), lr
  monkeypatch.setattr(optim, "make", nan_updates)
  # Checked where parameters are stored in float16 (adamw's eps is refused there: lars).
  c = tiny_config(total_steps=2, mesh=ONE_DEVICE, **{
      "eval.evaluators": (), "model.param_dtype": "float16", "optimizer.name": "lars"})
  with pytest.raises(train.NonFiniteError, match=r"Step 1: non-finite parameters after the "
                     r"update\. Nothing from this step was applied"):
    train.train_and_evaluate(c, str(tmp_path))


# --- checkpoints that cannot be restored -----------------------------------------------------

def _damage(workdir, step):
  """Truncates the largest data file of checkpoint `step` (a disk filled mid-write)."""
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "**", "d", "*"),
                    recursive=True)
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


def test_corrupt_latest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, caplog):
  c = tiny_config(total_steps=4, mesh=ONE_DEVICE, **{"eval.evaluators": ()})
  full = train.train_and_evaluate(c, str(tmp_path / "full"))["train_state"]
  shutil.copytree(tmp_path / "full", tmp_path / "damaged")
  _damage(str(tmp_path / "damaged"), 4)
  with caplog.at_level(logging.ERROR, logger="absl"):
    resumed = train.train_and_evaluate(c, str(tmp_path / "damaged"))
  assert "Checkpoint 4" in caplog.text and "cannot be restored" in caplog.text
  moved = os.listdir(tmp_path / "damaged" / "checkpoints_corrupt")
  assert len(moved) == 1 and moved[0].startswith("4-")  # Kept for inspection, not deleted.
  # Resumed from step 2 and redid steps 3-4 exactly.
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed["train_state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _steps(str(tmp_path / "damaged")) == [2, 4]

  for step in (2, 4):
    _damage(str(tmp_path / "damaged"), step)
  with pytest.raises(ValueError, match=r"None of the checkpoints \[4, 2\] .* could be restored"):
    train.train_and_evaluate(c, str(tmp_path / "damaged"))


def _flip(path, position, nbytes, rng):
  """Overwrites `nbytes` bytes of `path` at `position` (1: flips one bit there)."""
  with open(path, "r+b") as f:
    f.seek(position)
    old = f.read(nbytes)
    f.seek(position)
    f.write(bytes([old[0] ^ (1 << int(rng.integers(8)))]) if nbytes == 1 else
            bytes((b + 1 + int(rng.integers(255))) % 256 for b in old))


def test_flipped_bits_are_caught_by_the_digest_and_the_previous_checkpoint_used(tmp_path,
                                                                                 caplog):
  c = tiny_config(total_steps=4, mesh=ONE_DEVICE, **{"eval.evaluators": ()})
  full = train.train_and_evaluate(c, str(tmp_path / "full"))["train_state"]
  assert os.path.isfile(tmp_path / "full" / "checkpoints" / "4" / checkpoint.DIGEST)
  rng = np.random.default_rng(0)
  for trial, nbytes in enumerate((1, 16, 1)):
    workdir = tmp_path / f"flipped{trial}"
    shutil.copytree(tmp_path / "full", workdir)
    files = sorted(glob.glob(str(workdir / "checkpoints" / "4" / "**" / "d" / "*"),
                   recursive=True), key=os.path.getsize)
    target = files[-1 - trial % 2]  # The largest files hold the parameters and moments.
    _flip(target, int(rng.integers(os.path.getsize(target) - nbytes)), nbytes, rng)
    with caplog.at_level(logging.ERROR, logger="absl"):
      resumed = train.train_and_evaluate(c, str(workdir))["train_state"]
    # Whatever the bytes held (some are read by nobody), nothing changed comes back: a
    # damaged step 4 is refused and redone from step 2.
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Orbax itself restored at least one of them without a word: the digest caught it.
  assert "arrays differ from the digest written when it was saved" in caplog.text


def test_a_restore_that_differs_from_the_digest_is_refused_naming_the_arrays(tmp_path, caplog):
  c = tiny_config(total_steps=4, mesh=ONE_DEVICE, **{"eval.evaluators": ()})
  train.train_and_evaluate(c, str(tmp_path))
  path = tmp_path / "checkpoints" / "4" / checkpoint.DIGEST
  sums = json.loads(path.read_text())
  key = next(k for k in sums if "kernel" in k)
  sums[key][1] += 1  # As if one element of that array had changed on disk.
  path.write_text(json.dumps(sums))
  with caplog.at_level(logging.ERROR, logger="absl"):
    assert train.train_and_evaluate(c, str(tmp_path))["step"] == 4
  assert f"1 of {len(sums)} arrays differ from the digest" in caplog.text and key in caplog.text


def test_digest_is_the_same_on_any_mesh_and_sees_one_flipped_bit():
  x = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
  tree = {"a": jnp.asarray(x), "b": jnp.arange(5), "c": jnp.bfloat16(3.0)}
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("x", "y"))
  sharded = dict(tree, a=jax.device_put(x, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("x", "y"))))
  assert checkpoint.digest(sharded) == checkpoint.digest(tree)
  for flip in ((3, 2, 31), (0, 0, 0), (15, 5, 7)):
    y = x.copy()
    y.view(np.uint32)[flip[:2]] ^= np.uint32(1 << flip[2])
    assert checkpoint.digest(dict(tree, a=jnp.asarray(y)))["['a']"] != checkpoint.digest(
        tree)["['a']"], flip
  swapped = x[[1, 0] + list(range(2, 16))]
  assert checkpoint.digest(dict(tree, a=jnp.asarray(swapped)))["['a']"][1] != checkpoint.digest(
      tree)["['a']"][1]


def test_unreadable_metadata_falls_back_and_quarantine_is_bounded(tmp_path, caplog):
  c = tiny_config(total_steps=4, mesh=ONE_DEVICE, **{"eval.evaluators": (),
                                                    "checkpoint.every_steps": 1,
                                                    "checkpoint.keep": 8})
  train.train_and_evaluate(c, str(tmp_path))
  # Orbax reads a checkpoint without _METADATA as an empty tree: not "other shapes".
  os.remove(tmp_path / "checkpoints" / "4" / "default" / "_METADATA")
  with caplog.at_level(logging.ERROR, logger="absl"):
    assert train.train_and_evaluate(c, str(tmp_path))["step"] == 4
  assert "metadata is missing" in caplog.text and "other shapes" not in caplog.text
  for step in (4, 3, 2, 1):  # Each restore fails: only the newest CORRUPT_KEEP stay.
    _damage(str(tmp_path), step)
  with pytest.raises(ValueError, match="None of the checkpoints"):
    train.train_and_evaluate(c, str(tmp_path))
  moved = sorted(os.listdir(tmp_path / "checkpoints_corrupt"))
  assert len(moved) == checkpoint.CORRUPT_KEEP and not any(m.startswith("4-") for m in moved)


# --- configs ---------------------------------------------------------------------------------

def test_resuming_with_an_incompatible_config_is_refused_saying_what_differs(tmp_path):
  c = tiny_config(total_steps=2, mesh=ONE_DEVICE, **{"eval.evaluators": ()})
  train.train_and_evaluate(c, str(tmp_path))
  saved = open(tmp_path / "config.json").read()
  changed = tiny_config(total_steps=4, mesh=ONE_DEVICE, **{"eval.evaluators": (),
                                                           "model.width": 8,
                                          "loss.temperature": 0.5})
  with pytest.raises(ValueError, match=(r"(?s)config.loss.temperature: saved 0.2, now 0.5.*"
                                        r"config.model.width: saved 4, now 8.*new --workdir")):
    train.train_and_evaluate(changed, str(tmp_path))
  assert open(tmp_path / "config.json").read() == saved and _steps(str(tmp_path)) == [2]
  # A config.json-less workdir (written elsewhere) is still refused, by the shapes.
  os.remove(tmp_path / "config.json")
  with pytest.raises(ValueError, match="holds a train state of other shapes"):
    train.train_and_evaluate(changed, str(tmp_path))
  # Run length, logging, evaluation, mesh: may change.
  longer = tiny_config(total_steps=4, mesh=[("data", 2), ("fsdp", 4)],
                       **{"eval.evaluators": ("knn",), "log_every_steps": 2})
  assert train.train_and_evaluate(longer, str(tmp_path))["step"] == 4


BAD_CONFIGS = [
    # (recipe, overrides, the message's specific part)
    ("simclr_digits", {"batch_size": 12}, "config.batch_size=12 is not divisible by the 8"),
    ("simclr_digits", {"batch_size": 0}, "config.batch_size=0: must be an int >= 2"),
    ("simclr_digits", {"batch_size": 1}, "config.batch_size=1: must be an int >= 2; a "
                                         "contrastive loss compares each example with the rest"),
    ("simclr_digits", {"batch_size": 2048}, "config.batch_size=2048: must be <= the 1437 "
                                            "training examples of config.data.name='digits'"),
    ("simclr_digits", {"optimizer.name": "adam_typo"},
     "config.optimizer.name='adam_typo': must be one of"),
    ("simclr_digits", {"method": "simclr_typo"}, "config.method='simclr_typo' is not a known "
                                                 "method (did you mean 'simclr'?)"),
    ("simclr_digits", {"mesh": [("data", 16)]}, "needs 16 devices but only 8"),
    ("simclr_digits", {"mesh": [("dat", -1)]}, "names axes ['dat']; mesh axes are"),
    ("simclr_digits", {"data.name": "imagenet_typo"}, "config.data.name='imagenet_typo'"),
    ("simclr_digits", {"num_epoch": 3}, "config.num_epoch is not a config key of this run "
                                        "(a typo?); "
                                        "did you mean config.num_epochs?"),
    ("simclr_digits", {"optimizer.lrr": 1.0}, "did you mean config.optimizer.lr?"),
    ("simclr_digits", {"moco.momentum": 0.9}, "it is a key of method moco, not of 'simclr'"),
    ("poly_view_digits", {"loss.positives": "label"},
     "config.loss.positives is not a config key of this run (a typo?); it is a key of method"),
    ("poly_view_digits", {"loss.objective": "geometrc"}, "config.loss.objective='geometrc': "
                                                         "must be one of"),
    ("simclr_digits", {"augment.crop_scale": (1.0, 0.3)}, "config.augment.crop_scale=(1.0, 0.3)"
                                                          ": must be a pair (lo, hi)"),
    ("simclr_digits", {"augment.flip_prob": 1.5}, "config.augment.flip_prob=1.5: must be a "
                                                  "number >= 0 and <= 1"),
    ("simclr_digits", {"augment.color_jitter_prob": 1.5},
     "config.augment.color_jitter_prob=1.5: must be a number >= 0 and <= 1"),
    ("moco_v3_digits", {"augment_views": ({"blur_prob": 1.5},)},
     "entry 0 sets blur_prob=1.5, which must be a number >= 0 and <= 1"),
    ("moco_v3_digits", {"augment_views": ({"blur_prb": 1.0},)},
     "entry 0 sets 'blur_prb', which is not a key of config.augment (did you mean 'blur_prob'?)"),
    ("swav_digits", {"multicrop.num_small": -1}, "config.multicrop.num_small=-1: must be an int "
                                                 ">= 0"),
    # ViTs: every crop the patch size must divide, of the model or of a two-tower's image tower.
    ("moco_v3_digits", {"augment.crop_size": 18},
     "config.augment.crop_size=18: must be a multiple of the ViT patch size 4 "
     "(config.model.variant='Ti/4'), which drops the 2 px left over; use 16 or 20"),
    ("moco_v3_digits", {"augment_views": ({"crop_size": 10},)},
     "config.augment_views[0].crop_size=10: must be a multiple of the ViT patch size 4"),
    ("swav_digits", {"model.name": "vit", "model.variant": "Ti/4", "model.heads": 2,
                     "multicrop.num_small": 2, "multicrop.crop_size": 6},
     "config.multicrop.crop_size=6: must be a multiple of the ViT patch size 4"),
    ("clip_digits", {"augment.crop_size": 6}, "config.augment.crop_size=6: must be a multiple of "
                                              "the ViT patch size 4 (config.model.image.variant"),
    ("simclr_digits", {"model.name": "vit"}, "config.model.name='vit' needs config.model.variant"),
    ("moco_v3_digits", {"model.heads": 3}, "config.model.heads=3: must divide the ViT width 16"),
    ("simclr_digits", {"data.name": "tfds"}, "set config.data.tfds_name"),
    ("simclr_digits", {"data.name": "tfds", "data.tfds_name": "mnist"},
     "config.data.name='tfds' reads a tfds array_record build: set config.data.data_dir"),
    ("simclr_digits", {"model.width": 0}, "config.model.width=0: must be an int >= 1"),
    ("simclr_digits", {"model.head_dim": 0}, "config.model.head_dim=0: must be an int >= 1"),
    ("simclr_digits", {"model.head_hidden_dims": (0,)},
     "config.model.head_hidden_dims=(0,): must be a tuple of ints >= 1"),
    ("simclr_digits", {"model.widht": 8}, "did you mean config.model.width?"),
    ("simclr_digits", {"optimizer.temperature": 0.1},
     "did you mean config.eval.knn.temperature or config.loss.temperature?"),
    ("simclr_digits", {"optimizer.lr": -1.0}, "config.optimizer.lr=-1.0: must be a number > 0"),
    ("simclr_digits", {"loss.temperature": 0.0}, "config.loss.temperature=0.0: must be"),
    ("simclr_digits", {"total_steps": -5}, "config.total_steps=-5: must be an int >= 0"),
    ("simclr_digits", {"checkpoint.keep": 0}, "config.checkpoint.keep=0: must be an int >= 1"),
    ("simclr_digits", {"nonfinite": "ignore"}, "config.nonfinite='ignore': must be one of"),
    ("simclr_digits", {"num_views": 1}, "config.num_views=1: must be an int >= 2"),
    ("simclr_digits", {"micro_batches": 3},
     "config.batch_size=16 must split into config.micro_batches=3"),
    ("moco_v2_digits", {"micro_batches": 2}, "config.micro_batches=2: GradCache needs"),
    ("simclr_digits", {"model.name": "vitt"},
     "config.model.name='vitt': must be one of ('resnet', 'vit')"),
    ("simclr_digits", {"model.dtype": "float8"}, "config.model.dtype='float8': must be one of"),
    ("simclr_digits", {"model.remat": "some"}, "config.model.remat='some': must be one of"),
    ("simclr_digits", {"loss.positives": "labels"},
     "config.loss.positives='labels': must be one of"),
    ("simclr_digits", {"eval.evaluators": ("knn", "fid")},
     "config.eval.evaluators='fid' is not a known evaluator"),
    ("simclr_digits", {"eval.evaluators": ("zero_shot",)}, "need an image-text method"),
    ("simclr_digits", {"sharding.rules": ((".*kernel", "tensor"),)},
     "names mesh axis 'tensor', but config.mesh has ('data',)"),
    ("clip_digits", {"data.name": "digits"},
     "config.data.name='digits' has no captions; the method trains on image-text pairs"),
    ("clip_digits", {"text.tokenizer.length": 1},
     "config.text.tokenizer.length=1: must be an int >= 2"),
    ("simclr_digits", {"data.name": "tfds", "data.tfds_name": "mnist",
                       "data.data_dir": "/nonexistent/tfds"},
     "config.data.data_dir='/nonexistent/tfds' does not exist"),
    # A directory that exists and is no run's workdir (configs/ never holds checkpoints/).
    ("simclr_digits", {"init_from.workdir": os.path.join(ROOT, "configs"),
                       "init_from.rules": ((".*", r"\g<0>"),)},
     f"config.init_from.workdir={os.path.join(ROOT, 'configs')!r} has no checkpoints/"),
    # A missing source is named before the rules (none here) are.
    ("simclr_digits", {"init_from.workdir": "/nonexistent/run"},
     "config.init_from.workdir='/nonexistent/run' does not exist; set it to the workdir"),
    ("swav_digits", {"swav.num_prototypes": 0}, "config.swav.num_prototypes=0: must be"),
    ("simclr_digits", {"mesh": [("data", 2), ("data", -1)]}, "names an axis twice"),
    ("simclr_digits", {"mesh": [("data", 0), ("fsdp", -1)]},
     "each axis size must be >= 1, or -1 for the remaining devices"),
    ("clip_digits", {"model.text.heads": 3},
     "config.model.text.heads=3: must divide the text width 16 (config.model.text.width)"),
    ("clip_digits", {"model.image.width": 18, "model.image.heads": 2},
     "config.model.image.width=18: must be a multiple of 4 for config.model.image.posemb="
     "'sincos2d'"),
    ("simclr_digits", {"augment_views": ({}, {"crop_size": 4})},
     "config.augment_views[1].crop_size=4: the views of a batch share config.augment.crop_size"),
    ("simclr_digits", {"model.param_dtype": "float16"},
     "config.model.param_dtype='float16' with config.optimizer.name='adamw': its eps 1e-08"),
]


@pytest.mark.parametrize("recipe, overrides, message", BAD_CONFIGS, ids=[
    f"{r}:" + ",".join(f"{k}={v}" for k, v in o.items()) for r, o, _ in BAD_CONFIGS])
def test_bad_config_fails_before_compiling_with_its_specific_message(recipe, overrides,
                                                                      message, tmp_path,
                                                                      monkeypatch):
  def not_traced(*args, **kw):
    raise AssertionError("the train step was traced before the config was rejected")
  monkeypatch.setattr(run_lib, "_train_step", not_traced)
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(tiny_config(recipe, **overrides), str(tmp_path))
  assert message in str(error.value)
  assert not _steps(str(tmp_path))


# --- the workdir: one run at a time, files a crash may have torn -----------------------------

_HOLD_LOCK = """
import sys, time
from big_contrast import train
train._WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_is_refused_naming_the_first_and_a_killed_holder_blocks_nothing(tmp_path):
  c = tiny_config(total_steps=2, mesh=ONE_DEVICE, **{"eval.evaluators": ()})
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, workdir], cwd=ROOT, env=ENV,
                            text=True, stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(train.WorkdirInUse, match=rf"run is in use by pid {holder.pid} on "
                       rf"{socket.gethostname()} since .*: wait for it to end"):
      train.train_and_evaluate(c, workdir)
    assert sorted(os.listdir(workdir)) == ["lock"]  # Refused before anything was written.
  finally:
    holder.kill()  # As a preempted job's node does: no cleanup runs.
    holder.wait()
  assert train.train_and_evaluate(c, workdir)["step"] == 2
  # The lock names its holder while the run trains, in this process.
  assert f"pid {os.getpid()} on {socket.gethostname()}" in open(os.path.join(workdir, "lock")).read()


def test_a_workdir_that_is_a_file_or_cannot_be_created_is_named(tmp_path, monkeypatch):
  c = tiny_config(total_steps=2, mesh=ONE_DEVICE, **{"eval.evaluators": ()})
  (tmp_path / "file").write_text("data")
  with pytest.raises(NotADirectoryError, match=r"--workdir='.*file' is a file; name a dir"):
    train.train_and_evaluate(c, str(tmp_path / "file"))
  with pytest.raises(PermissionError, match=r"--workdir='.*file/run' cannot be written \(Not "
                     r"a directory\); choose a directory"):
    train.train_and_evaluate(c, str(tmp_path / "file" / "run"))
  assert (tmp_path / "file").read_text() == "data"
  # A finished run's workdir made read-only: its log.txt is an earlier session's, so the
  # message does not point there for a traceback this session could not write.
  from big_contrast import cli
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "log.txt").write_text("an earlier session\n")
  monkeypatch.setattr(train.os, "open", _raise(PermissionError(13, "Permission denied")))
  with pytest.raises(train.WorkdirNotWritable) as refused:
    train.train_and_evaluate(c, str(tmp_path / "old"))
  assert cli.error_message(refused.value, str(tmp_path / "old")) == (
      f"FATAL WorkdirNotWritable: --workdir='{tmp_path / 'old'}' cannot be written (Permission "
      "denied); choose a directory this user can write.")


def _raise(error):
  def fail(*_, **__):
    raise error
  return fail


def test_a_torn_config_json_resumes_with_a_warning_and_errors_reach_log_txt(tmp_path, caplog):
  c = tiny_config(total_steps=2, mesh=ONE_DEVICE, **{"eval.evaluators": ()})
  train.train_and_evaluate(c, str(tmp_path))
  saved = (tmp_path / "config.json").read_text()
  (tmp_path / "config.json").write_text(saved[:len(saved) // 2])
  c = tiny_config(total_steps=4, mesh=ONE_DEVICE, **{"eval.evaluators": ()})
  with caplog.at_level(logging.WARNING, logger="absl"):
    assert train.train_and_evaluate(c, str(tmp_path))["step"] == 4
  assert "config.json is not valid JSON" in caplog.text
  assert (tmp_path / "config.json.corrupt").read_text() == saved[:len(saved) // 2]
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 4
  # An error that stops a run is in log.txt with its traceback, after the earlier warning.
  with pytest.raises(ValueError):
    train.train_and_evaluate(tiny_config(total_steps=6, mesh=ONE_DEVICE, batch_size=1),
                             str(tmp_path))
  log = (tmp_path / "log.txt").read_text()
  assert log.index("config.json is not valid JSON") < log.index(
      "ERROR The run stopped: config.batch_size=1: must be an int >= 2")
  assert "Traceback (most recent call last)" in log


CLI_ERRORS = [
    # (arguments, exit code, the last line of stderr)
    (["--config=configs/moco_v2_digits.py", "--config.optimizer.learning_rate=0.1"], 2,
     "FATAL Flags parsing error: config.optimizer.learning_rate is not a config key of this run "
     "(a typo?); config.optimizer has ['b1', "),
    (["--config=configs/moco_v2_digits.py", "--config.moco.queue_sise=8"], 2,
     "did you mean config.moco.queue_size?"),
    (["--config=configs/moco_v2_digit.py"], 2, "FATAL Flags parsing error: --config=configs/"
                                               "moco_v2_digit.py: no such file; did you mean "
                                               "configs/moco_v2_digits.py?"),
    (CLI_ARGS + ["--config.batch_size=1"], 1,
     "FATAL ValueError: config.batch_size=1: must be an int >= 2"),
]


@pytest.mark.parametrize("args, code, message", CLI_ERRORS)
def test_cli_errors_are_one_message_naming_the_key_and_the_fix(args, code, message, tmp_path):
  out = subprocess.run([sys.executable, "-m", "big_contrast.main", *args,
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=ENV, text=True,
                       capture_output=True, timeout=300)
  assert out.returncode == code, out.stderr[-3000:]
  assert message in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
  if code == 1:  # The traceback is in the workdir's log.
    assert f"(The traceback is in {tmp_path / 'run' / 'log.txt'}.)" in out.stderr
    assert "Traceback" in (tmp_path / "run" / "log.txt").read_text()


_PARSE = """
import sys
from absl import flags
from big_contrast import cli, main
cli.parse_flags(sys.argv)
c = flags.FLAGS.config
print(c.optimizer.eps, c.model.block_chunks, c.model.remat, c.model.heads)
"""


def test_declared_keys_a_recipe_leaves_out_are_set_from_the_command_line():
  # Optional settings (optimizer.eps, model.heads) are in no recipe; MoCo v3 builds its own
  # model section. config_flags alone can only override keys the recipe holds.
  out = subprocess.run([sys.executable, "-c", _PARSE, "--config=configs/moco_v3_digits.py",
                        "--config.optimizer.eps=1e-4", "--config.model.block_chunks=2",
                        "--config.model.remat=full", "--config.model.heads=2",
                        "--workdir=/tmp/unused"], cwd=ROOT, env=ENV, text=True,
                       capture_output=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["0.0001", "2", "full", "2"]


def test_digest_sums_large_shards_in_chunks_exactly(monkeypatch):
  x = np.random.default_rng(1).standard_normal((300, 7, 5)).astype(np.float32)
  whole = checkpoint.digest({"a": jnp.asarray(x)})
  monkeypatch.setattr(checkpoint, "_CHUNK", 100)  # 2 rows of 35 elements at a time.
  assert checkpoint.digest({"a": jnp.asarray(x)}) == whole
