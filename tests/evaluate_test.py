"""Evaluators (k-NN, linear probe, linear evaluation, fine-tuning, zero-shot), the sharded bank,
and `python -m big_contrast.evaluate`."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from big_contrast import evaluate
from big_contrast import sharding
from input_pipeline import digits
import pytest
from big_contrast import train
from conftest import assert_fraction_of_test_split
from conftest import damaged_copy
from conftest import tiny_config


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
    feats, labels = evaluate.features.bank(mean_pixel, source, mesh, batch_size=64).gather()
    np.testing.assert_allclose(feats, want, rtol=1e-6)
    np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(len(source))])


# Evaluators on hand-made embeddings.

def test_zero_shot_on_known_embeddings():
  classes = np.eye(3)                                   # class c points along axis c
  prompts = np.stack([classes + 0.1, classes * 2])      # two templates; normalised away
  classifier = evaluate.zero_shot_classifier(prompts.transpose(1, 0, 2))
  images = np.array([[1, 0.2, 0], [0, 0, 3], [0.1, 1, 0], [1, 0, 0]])
  labels = np.array([0, 2, 1, 1])
  acc = evaluate.zero_shot_accuracy(images, classifier, labels, ks=(1, 2))
  np.testing.assert_allclose(acc[1], 0.75)   # the last image is a 0, labelled 1
  np.testing.assert_allclose(acc[2], 1.0)


def test_retrieval_recall_on_known_embeddings():
  images = np.eye(4)[:3]                     # 3 images along axes 0, 1, 2
  texts = np.array([[1, 0, 0, 0],            # caption of image 0
                    [0, 0.3, 1, 0],          # caption of image 1, but points at image 2
                    [0, 0.9, 0.1, 0],        # caption of image 1
                    [0, 0, 1, 0.5]])         # caption of image 2
  r = evaluate.retrieval_recall(images, texts, np.array([0, 1, 1, 2]), ks=(1, 2))
  # image -> text: 0 finds text 0; 1 finds text 2 (its own); 2's best is text 1 (image 1's).
  np.testing.assert_allclose([r["i2t_r@1"], r["i2t_r@2"]], [2 / 3, 1])
  # text -> image: texts 0, 2, 3 right at 1; text 1 ranks image 2 first, image 1 second.
  np.testing.assert_allclose([r["t2i_r@1"], r["t2i_r@2"]], [3 / 4, 1])


def test_retrieval_ties_count_against_the_model():
  same = np.ones((5, 4))
  r = evaluate.retrieval_recall(same, same, np.arange(5), ks=(1,))
  assert r["i2t_r@1"] == 0 and r["t2i_r@1"] == 0



def test_image_text_evaluators_need_an_image_text_method(tmp_path):
  c = tiny_config("simclr_digits", **{"eval.evaluators": ("knn", "zero_shot")})
  with pytest.raises(ValueError, match="need an image-text method"):
    train.train_and_evaluate(c, str(tmp_path))
  c = tiny_config("simclr_digits", **{"eval.evaluators": ("knn", "recall")})
  with pytest.raises(ValueError, match="config.eval.evaluators='recall' is not a known "
                                       "evaluator"):
    train.train_and_evaluate(c, str(tmp_path))


def test_evaluate_command_equals_the_in_training_evaluation_and_disturbs_nothing(tmp_path,
                                                                                 monkeypatch):
  """A checkpoint evaluated by `python -m big_contrast.evaluate` gives the in-training
  evaluation of its step; the reader leaves a running save's temporary directory alone."""
  import json
  import os
  import subprocess
  import sys
  from big_contrast import run_config
  from big_contrast.evaluate import command
  from conftest import subprocess_env
  workdir = str(tmp_path / "run")
  config = tiny_config(**{"eval.evaluators": ("knn", "linear_probe")})
  results = train.train_and_evaluate(config, workdir)
  in_progress = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp-123")
  os.makedirs(in_progress)
  saved = run_config.read_saved(workdir)
  assert saved.mesh == config.mesh and saved.eval.evaluators == ("knn", "linear_probe")
  out = command.evaluate_workdir(saved, workdir)
  assert out["step"] == 4 and out["metrics"] == results["final"]
  assert os.path.isdir(in_progress)
  record = json.load(open(out["file"]))
  assert record["metrics"] == results["final"] and len(record["evaluations"]) == 1
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r for r in rows if r["step"] == 4 and "eval/knn_top1" in r] == [
      {"step": 4, **results["final"]}] * 2
  # The command line: another step, one evaluator, a setting overridden.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cli = subprocess.run([sys.executable, "-m", "big_contrast.evaluate", f"--workdir={workdir}",
                        "--step=2", "--evaluators=knn", "--config.eval.knn.k=3"], cwd=root,
                       env=subprocess_env(1), capture_output=True, text=True, timeout=300)
  assert cli.returncode == 0, cli.stderr[-3000:]
  assert "Step 2: knn_top1=" in cli.stdout, cli.stdout
  record = json.load(open(os.path.join(workdir, "evaluations", "step_2.json")))
  assert list(record["metrics"]) == ["eval/knn_top1", "eval/knn_top5"]
  assert record["evaluations"][0]["config"]["eval"]["knn"]["k"] == 3
  missing = subprocess.run([sys.executable, "-m", "big_contrast.evaluate",
                            f"--workdir={workdir}", "--step=3"], cwd=root,
                           env=subprocess_env(1), capture_output=True, text=True, timeout=300)
  assert missing.returncode != 0 and "no checkpoint 3" in missing.stderr
  assert "it holds [2, 4]" in missing.stderr
  typo = subprocess.run([sys.executable, "-m", "big_contrast.evaluate", f"--workdir={workdir}",
                         "--config.eval.knn.kk=3"], cwd=root, env=subprocess_env(1),
                        capture_output=True, text=True, timeout=300)
  assert typo.returncode == 2 and "did you mean config.eval.knn.k?" in typo.stderr, typo.stderr
  # A checkpoint that differs from its digest is neither evaluated nor moved; the error
  # names the step to use instead.
  import shutil
  from big_contrast import checkpoint
  damaged = damaged_copy(workdir, str(tmp_path / "damaged"), 4)
  with pytest.raises(checkpoint.CorruptCheckpoint,
                     match=r"Checkpoint 4 .* differ .* Nothing was evaluated; use an earlier "
                     r"one, e.g. --step=2 \(steps \[2, 4\]\)"):
    command.evaluate_workdir(saved, damaged)
  assert {"2", "4"} <= set(os.listdir(os.path.join(damaged, "checkpoints")))
  # A workdir that cannot take the results is refused before its checkpoint is even read.
  blocked = str(tmp_path / "blocked")
  shutil.copytree(workdir, blocked)
  shutil.rmtree(os.path.join(blocked, "evaluations"))
  open(os.path.join(blocked, "evaluations"), "w").close()
  monkeypatch.setattr(checkpoint.Checkpointer, "restore", lambda *_: pytest.fail("restored"))
  with pytest.raises(PermissionError, match="cannot take the results"):
    command.evaluate_workdir(saved, blocked)


def test_sharded_knn_equals_the_unsharded_reference_on_8_devices():
  """The bank split over 8 devices (each scanning its rows, top-k merged across them) gives
  the reference's neighbours; top-5 >= top-1; padding rows never vote or count."""
  rng = np.random.default_rng(1)
  train_x, test_x = rng.normal(size=(203, 8)), rng.normal(size=(45, 8))
  train_y, test_y = rng.integers(0, 7, 203), rng.integers(0, 7, 45)
  want = np.mean(_knn_reference(train_x, train_y, test_x, 10, 0.1, 7) == test_y)
  mesh = sharding.make_mesh([("data", 8)])
  put = lambda bank: evaluate.Bank(*(jax.device_put(a, evaluate.bank_sharding(mesh))
                                     for a in (bank.x, bank.y, bank.valid)))
  train = put(evaluate.knn._host_bank(train_x, train_y, 32))  # 7 batches, the last padded.
  test = put(evaluate.knn._host_bank(test_x, test_y, 16))
  assert train.x.sharding.shard_shape(train.x.shape) == (7, 4, 8)
  acc = evaluate.knn_bank_accuracy(train, test, mesh, num_classes=7, k=10, temperature=0.1)
  np.testing.assert_allclose(acc["top1"], want, rtol=1e-6)
  assert 0.3 < acc["top5"] <= 1.0 and acc["top5"] >= acc["top1"]
  one = evaluate.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=7, k=10,
                              temperature=0.1)
  np.testing.assert_allclose(one, want, rtol=1e-6)


def test_bank_streams_features_sharded_in_order():
  """Batches are written in order into a bank sharded over the mesh; gather() drops padding."""
  source = digits.source("test", image_size=8)          # 360 examples: the last batch is padded.
  mean_pixel = jax.jit(lambda x: jnp.mean(x.astype(jnp.float32), axis=(1, 2)))
  mesh = sharding.make_mesh([("data", 8)])
  bank = evaluate.features.bank(mean_pixel, source, mesh, batch_size=64)
  assert bank.x.shape == (6, 64, 3) and len(bank) == 360
  assert bank.x.sharding.spec == evaluate.bank_sharding(mesh).spec
  assert {s.data.shape for s in bank.x.addressable_shards} == {(6, 8, 3)}
  x, y = bank.gather()
  np.testing.assert_allclose(x, [source[i]["image"].mean((0, 1)) for i in range(360)], rtol=1e-6)
  flat_x, flat_y, flat_valid = bank.flat()  # The linear probe's view: still sharded.
  assert flat_x.shape == (384, 3) and flat_x.sharding.spec == jax.sharding.PartitionSpec("data")
  assert int(flat_valid.sum()) == 360 and sorted(np.asarray(flat_y)[np.asarray(flat_valid)]) == (
      sorted(y))


def test_knn_memory_per_device_is_the_banks_share():
  from tools import knn_memory
  m = knn_memory.bank_memory(train=8 * 64 * 4, dim=16, batch=64, num_classes=10)
  share = 8 * 64 * 4 * 16 * 4 / 8  # float32 features split over the 8 devices.
  assert m["devices"] == 8 and share <= m["argument_bytes"] < 1.3 * share


def test_balanced_subset_takes_each_class_share():
  from big_contrast.evaluate import classifier
  labels = np.repeat(np.arange(4), [100, 50, 10, 3])
  idx = classifier.balanced_subset(labels, 0.1, seed=0)
  assert np.bincount(labels[idx]).tolist() == [10, 5, 1, 1]  # At least one of each class.
  assert np.array_equal(idx, classifier.balanced_subset(labels, 0.1, seed=0))
  assert not np.array_equal(idx, classifier.balanced_subset(labels, 0.1, seed=1))
  assert len(np.unique(idx)) == len(idx)


def test_classifier_views_are_crops_and_flips_of_the_image_only():
  from big_contrast.evaluate import classifier
  from ml_collections import ConfigDict
  images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  same = ConfigDict(dict(crop_scale=(1.0, 1.0), flip_prob=0.0))
  views = classifier._views({"image": images}, jax.random.PRNGKey(0), 16, same)
  assert views.dtype == jnp.uint8 and np.array_equal(views, images)
  flipped = classifier._views({"image": images}, jax.random.PRNGKey(0), 16,
                              ConfigDict(dict(crop_scale=(1.0, 1.0), flip_prob=1.0)))
  assert np.array_equal(flipped, images[:, :, ::-1])
  host = classifier._views({"views": images[:, None]}, jax.random.PRNGKey(0), 16, same)
  assert np.array_equal(host, images)  # Cropped on the host: nothing else happens here.
  cropped = classifier._views({"image": images}, jax.random.PRNGKey(0), 8,
                              ConfigDict(dict(crop_scale=(0.08, 1.0), flip_prob=0.5)))
  assert cropped.shape == (4, 8, 8, 3)


def test_linear_eval_and_finetune_learn_and_leave_the_run_untouched(tmp_path):
  """Measured with this config: linear_eval top-1 0.31 (linear_probe 0.40), finetune on all
  labels 0.19; chance is 0.10."""
  c = tiny_config(total_steps=2, mesh=[("data", 8)],
                  **{"eval.evaluators": (), "data.image_size": 16, "augment.crop_size": 16})
  run_results = train.train_and_evaluate(c, str(tmp_path))
  ts = run_results["train_state"]
  before = jax.tree.map(np.asarray, ts["params"])
  c.eval.update(evaluators=("linear_eval", "finetune"), batch_size=64)
  c.eval.linear_eval.update(epochs=5.0, standardize=True, crop_scale=(0.5, 1.0))
  c.eval.finetune.update(label_fractions=(0.1, 1.0), epochs=(3.0, 3.0), crop_scale=(0.5, 1.0))
  # AdamW: the tiny backbone's features are too ill-conditioned for SGD in a few epochs.
  c.eval.linear_eval.optimizer.update(name="adamw", lr=0.01, lr_batch_scale=0)
  c.eval.finetune.optimizer.update(name="adamw", lr=0.001, lr_batch_scale=0)
  from big_contrast import run as run_lib
  got = run_lib.setup(c).evaluate(ts)
  assert got["eval/linear_eval_top1"] > 0.2, got
  assert got["eval/finetune_100pct_top1"] > 0.15, got
  for name in ("linear_eval", "finetune_10pct", "finetune_100pct"):
    assert 0 <= got[f"eval/{name}_top1"] <= got[f"eval/{name}_top5"] <= 1, got
    assert_fraction_of_test_split(got[f"eval/{name}_top1"])
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, ts["params"]))


def test_clip_imagenet_lists_ship_as_data():
  from big_contrast.evaluate import image_text
  lists = image_text.clip_imagenet()
  assert len(lists["classnames"]) == 1000 and len(lists["templates"]) == 80
  assert lists["classnames"][0] == "tench" and lists["classnames"][-1] == "toilet paper"
  assert all(t.count("{}") == 1 for t in lists["templates"])
  assert lists["templates"][0] == "a bad photo of a {}."


def test_zero_shot_on_a_separate_labelled_folder_equals_the_runs_own_split(tmp_path):
  """zero_shot.data reads another labelled set (as ImageNet's val for a caption-trained run):
  the digits test split written as an ImageFolder scores what the run's own split scores."""
  from PIL import Image
  from big_contrast import run as run_lib
  from big_contrast.evaluate import image_text
  c = tiny_config("clip_digits", total_steps=2, **{"eval.evaluators": ()})
  ts = train.train_and_evaluate(c, str(tmp_path / "run"))["train_state"]
  test = digits.source("test", image_size=8)
  names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
  for i in range(len(test)):  # Folders "0".."9" sort into label order.
    folder = tmp_path / "folder" / "val" / str(int(test[i]["label"]))
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(test[i]["image"])).save(folder / f"{i}.png")
  c.eval.update(evaluators=("zero_shot",))
  c.eval.zero_shot.update(class_names=names, templates=("a photo of the number {}.",))
  own = run_lib.setup(c).evaluate(ts)
  c.eval.zero_shot.data.update(name="image_folder", path=str(tmp_path / "folder"), split="val")
  other = run_lib.setup(c).evaluate(ts)
  assert set(own) == {"eval/zero_shot_top1", "eval/zero_shot_top5"}
  np.testing.assert_allclose(other["eval/zero_shot_top1"], own["eval/zero_shot_top1"], atol=1e-6)
  c.eval.zero_shot.update(preset=image_text.CLIP_IMAGENET, class_names=(), templates=())
  with pytest.raises(ValueError, match="gives 1000 class names and the zero-shot data has 10"):
    run_lib.setup(c).evaluate(ts)
  c.eval.zero_shot.templates = ("a photo of a {}", "no slot")
  with pytest.raises(ValueError, match="must each hold one"):
    run_lib.setup(c)


def test_evaluate_command_scores_torchvision_weights_as_torchvision_computes(tmp_path):
  """A workdir without checkpoints and config.init_from.torch: the command evaluates the
  imported model; its k-NN equals the k-NN of torchvision's own features."""
  import safetensors.torch
  import torch
  import torchvision
  from big_contrast.evaluate import command
  torch.manual_seed(0)
  model = torchvision.models.resnet18().eval()
  safetensors.torch.save_file(model.state_dict(), str(tmp_path / "r18.safetensors"))
  c = tiny_config(mesh=[("data", 1)], **{
      "model.width": 64, "model.depth": 18, "model.stem": "imagenet",
      "eval.evaluators": ("knn",), "init_from.torch.path": str(tmp_path / "r18.safetensors"),
      "init_from.torch.library": "torchvision",
      "init_from.rules": (("params/backbone/(.*)", r"params/\1"),
                          ("state/model/batch_stats/backbone/(.*)",
                           r"state/model/batch_stats/\1"))})
  out = command.evaluate_workdir(c, str(tmp_path / "eval"))
  assert out["step"] == 0 and os.path.exists(out["file"])

  from big_contrast import run as run_lib
  method = run_lib.setup(c).method
  model.fc = torch.nn.Identity()

  def torch_features(split):
    source = digits.source(split, image_size=8)
    images = np.stack([source[i]["image"] for i in range(len(source))])
    x = torch.from_numpy(np.asarray(method.eval_view(images))).permute(0, 3, 1, 2)
    with torch.no_grad():
      return model(x).numpy(), np.array([source[i]["label"] for i in range(len(source))])
  want = evaluate.knn_accuracy(*torch_features("train"), *torch_features("test"),
                               num_classes=10, k=c.eval.knn.k, temperature=c.eval.knn.temperature)
  np.testing.assert_allclose(out["metrics"]["eval/knn_top1"], want, atol=1.5 / 360)


def test_classifiers_train_on_an_image_text_run(tmp_path):
  """Captions stay on the host: linear_eval and finetune read an image-text source's images."""
  c = tiny_config("clip_digits", total_steps=1, mesh=[("data", 8)], **{"eval.evaluators": ()})
  ts = train.train_and_evaluate(c, str(tmp_path))["train_state"]
  c.eval.update(evaluators=("linear_eval", "finetune"), batch_size=64)
  c.eval.linear_eval.epochs = 0.5
  c.eval.finetune.update(label_fractions=(0.1,), epochs=(1.0,))
  from big_contrast import run as run_lib
  got = run_lib.setup(c).evaluate(ts)
  assert set(got) == {f"eval/{n}_top{k}" for n in ("linear_eval", "finetune_10pct")
                      for k in (1, 5)}
  c.eval.finetune.epochs = (1.0, 2.0)
  with pytest.raises(ValueError, match="one number of epochs per label fraction"):
    run_lib.setup(c)
  c.eval.finetune.epochs = (1.0,)
  c.eval.linear_eval.batch_size = 12
  with pytest.raises(ValueError, match="config.eval.linear_eval.batch_size=12"):
    run_lib.setup(c)


def test_a_saved_config_gets_the_defaults_of_keys_added_since(tmp_path):
  import json
  from big_contrast import run_config
  c = tiny_config()
  saved = json.loads(c.to_json_best_effort())
  del saved["eval"]["linear_eval"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = run_config.read_saved(str(tmp_path))
  assert config.eval.linear_eval.epochs == 90.0 and config.mesh == c.mesh
  assert config.eval.knn.k == c.eval.knn.k and config.batch_size == c.batch_size


def test_top_k_hits_counts_valid_rows_and_clamps_k_to_the_classes():
  from big_contrast.numerics import top_k_hits
  scores = jnp.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5], [0.9, 0.0, 0.1]])
  labels, valid = jnp.array([1, 2, 0, 0]), jnp.array([True, True, True, False])
  hits = top_k_hits(scores, labels, valid, ks=(1, 2, 5))  # 3 classes: top-5 is every row.
  assert {k: int(v) for k, v in hits.items()} == {1: 1, 2: 2, 5: 3}
  assert int(top_k_hits(scores, labels, ks=(1,))[1]) == 2


def test_finetune_settings_refuse_bad_fractions_and_epochs_before_compile():
  from big_contrast import run_config
  for key, value, message in (
      ("eval.finetune.label_fractions", (0.0, 0.1), "holds 0.0, which must be a number > 0"),
      ("eval.finetune.label_fractions", (), "must be a non-empty tuple of numbers"),
      ("eval.finetune.epochs", (60.0, -1.0), "holds -1.0, which must be a number > 0")):
    with pytest.raises(ValueError, match=f"config.{key}=.*{message}"):
      run_config.check(tiny_config(**{key: value}))
