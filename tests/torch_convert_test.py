"""Export to torchvision / timm / open_clip: strict loads, equal outputs, exact round trips."""
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from big_contrast import models
from big_contrast import sharding
from big_contrast import torch_convert as tc
from big_contrast import torch_load
from big_contrast import train
from big_contrast import run as run_lib
from conftest import damaged_copy
from conftest import tiny_config
from input_pipeline import tokenizers
from tools import export_pytorch

torch.set_grad_enabled(False)


def _flat(variables):
  return {f"{c}/{sharding.path_name(p)}": np.asarray(x) for c, tree in variables.items()
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _unflat(flat):
  out = {}
  for path, x in flat.items():
    *parents, leaf = path.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(x)
  return out


def _randomize(variables, seed=0):
  """Every leaf random (BN scales, zero-init biases, variances > 0): no export bug can hide."""
  rs = np.random.RandomState(seed)
  def leaf(path, x):
    name = sharding.path_name(path)
    if name.endswith("var"):
      return jnp.asarray(rs.uniform(0.5, 1.5, x.shape), x.dtype)
    if name.endswith("scale"):
      return jnp.asarray(rs.uniform(0.5, 1.5, x.shape), x.dtype)
    return jnp.asarray(rs.normal(0, 0.3 if x.ndim < 2 else 1.0 / np.sqrt(x.shape[-2] * (
        np.prod(x.shape[:-2]) if x.ndim > 2 else 1)), x.shape), x.dtype)
  return {c: jax.tree_util.tree_map_with_path(leaf, t) for c, t in variables.items()}


def _assert_close(got, want, rtol=1e-4):
  got, want = np.asarray(got), np.asarray(want)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def _nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _load(info, state_dict):
  model = torch_load.build_torch_model(info)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                        strict=True)
  return model.eval()


def _round_trip(flat, entries, flax_exact=True):
  """torch -> Flax -> torch is the identity; so is Flax -> torch -> Flax where the torch model
  has no redundant parametrisation (open_clip folds our patch-embedding bias into positions)."""
  state_dict = tc.export(flat, entries)
  back = tc.import_(state_dict, entries)
  assert set(back) == set(flat)
  again = tc.export(back, entries)
  assert set(again) == set(state_dict)
  for k in state_dict:
    np.testing.assert_array_equal(again[k], state_dict[k], err_msg=k)
  for k in flat if flax_exact else ():
    np.testing.assert_array_equal(back[k], flat[k], err_msg=k)


@pytest.mark.parametrize("depth, stem, size", [(18, "cifar", 16), (50, "imagenet", 32)])
def test_resnet_loads_into_torchvision_and_matches(depth, stem, size):
  cfg = ml_collections.ConfigDict(dict(name="resnet", depth=depth, width=64, stem=stem))
  module = models.backbone(cfg)
  x = np.random.RandomState(1).normal(size=(2, size, size, 3)).astype(np.float32)
  variables = _randomize(dict(module.init(jax.random.PRNGKey(0), x, train=False)))
  want = module.apply(variables, x, train=False)
  flat, entries = _flat(variables), tc.resnet_entries(depth)
  model = _load(tc.resnet_torchvision(cfg), tc.export(flat, entries))
  _assert_close(model(_nchw(x)).numpy(), want)
  _round_trip(flat, entries)


def test_resnet_of_another_width_is_refused_with_the_reason():
  cfg = ml_collections.ConfigDict(dict(name="resnet", depth=18, width=16, stem="cifar"))
  with pytest.raises(ValueError, match="width=16: torchvision's ResNets have 64"):
    tc.resnet_torchvision(cfg)


def test_projection_head_loads_into_a_sequential():
  head = models.MLPHead((32, 24), 16, use_bn=True, last_bn=True)
  x = np.random.RandomState(2).normal(size=(4, 8)).astype(np.float32)
  variables = _randomize(dict(head.init(jax.random.PRNGKey(0), x, train=False)))
  flat = _flat(variables)
  entries = tc.mlp_head_entries(2, True, True)
  info = {"library": "torch", "layers": tc.mlp_head_layers(flat, 2, True, True)}
  model = _load(info, tc.export(flat, entries))
  _assert_close(model(torch.from_numpy(x)).numpy(), head.apply(variables, x, train=False))
  _round_trip(flat, entries)


@pytest.mark.parametrize("pool, posemb", [("cls", "sincos2d"), ("gap", "learn"), ("map", "sincos2d")])
def test_vit_loads_into_timm_and_matches(pool, posemb):
  cfg = ml_collections.ConfigDict(dict(name="vit", variant="S/4", width=32, depth=2, heads=4,
                                       pool=pool, posemb=posemb))
  module = models.backbone(cfg)
  x = np.random.RandomState(3).normal(size=(2, 16, 16, 3)).astype(np.float32)
  variables = _randomize(dict(module.init(jax.random.PRNGKey(0), x)))
  flat = _flat(variables)
  entries = tc.vit_entries(tc.vit_config(cfg), 16)
  info = tc.vit_timm(cfg, 16)
  model = _load(info, tc.export(flat, entries))
  _assert_close(model(_nchw(x)).numpy(), module.apply(variables, x))
  _round_trip(flat, entries)


def test_standard_vits_get_their_timm_names():
  import timm
  assert set(tc.TIMM_NAMES.values()) <= set(timm.list_models())
  for variant, pool, name in [("B/16", "cls", "vit_base_patch16_224"),
                              ("B/16", "map", "vit_base_patch16_siglip_224"),
                              ("S/16", "gap", "vit_small_patch16_224"),
                              ("S/4", "cls", "vit_base_patch16_224")]:  # generic, kwargs
    cfg = ml_collections.ConfigDict(dict(name="vit", variant=variant, pool=pool))
    assert tc.vit_timm(cfg, 224)["name"] == name


def _two_tower(sigmoid, image_pool="cls", causal=True, **text):
  c = tiny_config("siglip_digits" if sigmoid else "clip_digits")
  c.model.image.update(pool=image_pool, posemb="learn", width=32, heads=4, depth=2)
  c.model.text.update(causal=causal, width=32, heads=4, depth=2, **text)
  tokenizer = tokenizers.get_tokenizer(c.text.tokenizer)
  model = models.two_tower(c.model, tokenizer.vocab_size, tokenizer.pad_id, tokenizer.length,
                           bias=sigmoid)
  return c, tokenizer, model


# CLIP's towers (open_clip.CLIP, its own ViT) and SigLIP's as clip_digits/siglip_digits and
# big_vision build them (MAP-pooled image tower: open_clip's timm adapter; bidirectional text
# tower masking padding: CustomTextCLIP), and the mixed cases.
@pytest.mark.parametrize("sigmoid, image_pool, causal", [
    (False, "cls", True), (True, "cls", True), (True, "map", False), (False, "map", False),
    (False, "gap", True), (True, "cls", False)])
def test_two_tower_loads_into_open_clip_and_matches(sigmoid, image_pool, causal):
  c, tokenizer, model = _two_tower(sigmoid, image_pool, causal)
  rs = np.random.RandomState(4)
  x = rs.normal(size=(3, 8, 8, 3)).astype(np.float32)
  # Texts of different lengths: a bidirectional tower would see the padding if unmasked.
  tokens = tokenizer.batch(["a thin 3", "a bold slanted seven", ""])
  variables = _randomize(dict(model.init(jax.random.PRNGKey(0), x, tokens)))
  zimg, ztxt, t, b = model.apply(variables, x, tokens)
  flat = _flat(variables)
  entries = tc.two_tower_entries(c.model.image, c.model.text, 8, sigmoid)
  info = tc.two_tower_open_clip(c.model, tokenizer, 8, sigmoid)
  assert info["constructor"] == ("open_clip.CLIP" if causal else "open_clip.CustomTextCLIP")
  clip = _load(info, tc.export(flat, entries))
  got_img = clip.encode_image(_nchw(x), normalize=True).numpy()
  got_txt = clip.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy()
  _assert_close(got_img, zimg)
  _assert_close(got_txt, ztxt)
  # The logits each side computes: t·x·yᵀ (+ b).
  logits = clip.logit_scale.exp().item() * got_img @ got_txt.T
  if sigmoid:
    logits += clip.logit_bias.item()
  _assert_close(logits, float(t) * np.asarray(zimg) @ np.asarray(ztxt).T + float(b))
  _round_trip(flat, entries, flax_exact=image_pool != "cls")
  # Imported back, the Flax model computes what it computed before.
  back = _unflat(tc.import_(tc.export(flat, entries), entries))
  _assert_close(model.apply(back, x, tokens)[0], zimg)


@pytest.mark.parametrize("change, message", [
    ({"text.pool": "gap"}, "pools the text by"),
    ({"image.name": "resnet"}, "needs a ViT image tower"),
])
def test_two_towers_open_clip_cannot_express_are_refused(change, message):
  c, tokenizer, _ = _two_tower(False)
  key, value = next(iter(change.items()))
  c.model[key.split(".")[0]][key.split(".")[1]] = value
  with pytest.raises(ValueError, match=message):
    tc.two_tower_open_clip(c.model, tokenizer, 8, False)


def test_a_checkpoint_of_another_architecture_fails_clearly():
  cfg = ml_collections.ConfigDict(dict(name="resnet", depth=18, width=64, stem="cifar"))
  variables = models.backbone(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3)),
                                        train=False)
  with pytest.raises(ValueError, match="not the architecture expected"):
    tc.export(_flat(dict(variables)), tc.resnet_entries(50))
  vit = ml_collections.ConfigDict(dict(name="vit", variant="S/4", width=32, depth=2, heads=4))
  with pytest.raises(ValueError, match="not the architecture expected"):
    tc.import_(tc.export(_flat(dict(variables)), tc.resnet_entries(18)),
               tc.vit_entries(tc.vit_config(vit), 16))


def test_cli_exports_a_trained_run_that_torchvision_reproduces(tmp_path):
  """Train (tiny SimCLR, ResNet-18 width 64) -> tools/export_pytorch -> torchvision features
  equal the method's evaluation features; the head loads too."""
  c = tiny_config(total_steps=2, mesh=[("data", 1)],
                  **{"model.width": 64, "model.depth": 18, "eval.evaluators": ()})
  results = train.train_and_evaluate(c, str(tmp_path / "run"))
  export_pytorch.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                       "--pt"])
  with open(tmp_path / "out" / "export.json") as f:
    manifest = json.load(f)
  assert manifest["files"]["model.safetensors"]["constructor"] == "torchvision.models.resnet18"
  assert os.path.exists(tmp_path / "out" / "model.pt")
  backbone = torch_load.load_torch(str(tmp_path / "out"))
  head = torch_load.load_torch(str(tmp_path / "out"), "head")

  from big_contrast import methods
  method = run_lib.build_method(c, methods.Schedule(2, 1))
  ts = results["train_state"]
  images = np.random.RandomState(5).randint(0, 256, (4, 8, 8, 3)).astype(np.uint8)
  want = method.features(ts["params"], ts["state"], images)
  x = method.eval_view(images)
  _assert_close(backbone(_nchw(x)).numpy(), want)
  want_z = method.model.apply({"params": ts["params"], **ts["state"]["model"]},
                              want, train=False, method=type(method.model).head)
  _assert_close(head(torch.from_numpy(np.asarray(want))).numpy(), want_z)
  # export.json's preprocessing, as torchvision: a photo's input as the run's evaluation made it.
  assert manifest["preprocessing"]["input_size"] == 8
  import io
  from PIL import Image
  import photos
  from input_pipeline import decode
  data = photos.jpeg(61, 40, seed=3)
  theirs = torch_load.load_transform(str(tmp_path / "out"))(Image.open(io.BytesIO(data)))
  ours = np.asarray(method.eval_view(decode.center_view(data, c.data.image_size)[None]))[0]
  # PIL's and our resampling differ by a few levels at this 5x reduction (measured: mean 0.059,
  # max 0.25 in normalised units); a wrong size, crop, mean or std is off by far more.
  diff = np.abs(theirs.permute(1, 2, 0).numpy() - ours)
  assert diff.mean() < 0.08 and diff.max() < 0.5, (diff.mean(), diff.max())
  # A PyTorch project loads the export without JAX, from anywhere.
  import subprocess
  import sys
  script = ("import sys; sys.modules['jax'] = None\n"
            "import numpy as np, torch\n"
            "from big_contrast.torch_load import load_torch\n"
            f"model = load_torch({str(tmp_path / 'out')!r})\n"
            f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
            "print(repr(model(x).detach().numpy().tolist()))\n")
  np.save(tmp_path / "x.npy", _nchw(x).numpy())
  out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
  assert out.returncode == 0, out.stderr[-2000:]
  _assert_close(np.array(eval(out.stdout)), want)  # pylint: disable=eval-used


def test_cli_exports_a_siglip_run_with_clip_bpe_that_open_clip_reproduces(tmp_path):
  """Train (tiny siglip_digits: MAP image tower, bidirectional text tower, CLIP's BPE) ->
  tools/export_pytorch -> open_clip embeds images and its own tokenizer's ids as the run does."""
  import open_clip
  bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
  c = tiny_config("siglip_digits", total_steps=1, mesh=[("data", 1)], **{
      "text.tokenizer.name": "clip_bpe", "text.tokenizer.path": bpe,
      "eval.evaluators": ()})
  results = train.train_and_evaluate(c, str(tmp_path / "run"))
  out = str(tmp_path / "out")
  export_pytorch.main(["--workdir", str(tmp_path / "run"), "--out", out])
  clip = torch_load.load_torch(out)
  assert type(clip).__name__ == "CustomTextCLIP"
  tokenize = torch_load.load_tokenizer(out)

  from big_contrast import methods
  method = run_lib.build_method(c, methods.Schedule(1, 1))
  texts = ["a thin 3", "A BOLD, slanted seven!!", "naïve &amp;amp; café 42", ""]
  ours = np.stack([method.tokenizer(t) for t in texts])
  np.testing.assert_array_equal(tokenize(texts).numpy(), ours)
  # The corner case ClipBpeTokenizer documents: open_clip emits id 0 (its pad) for a bare "!"
  # inside a word, ours its word-final form so that the padding mask stays right.
  assert tokenize("!??")[0, 1] == 0 and method.tokenizer("!??")[1] == 256

  ts = results["train_state"]
  variables = {"params": ts["params"], **ts["state"]["model"]}
  images = np.random.RandomState(7).randint(0, 256, (3, 8, 8, 3)).astype(np.uint8)
  x = method.eval_view(images)
  want_img, want_txt = method.model.apply(variables, x, ours, train_image=False,
                                          train_text=False, method=type(method.model).embed)
  _assert_close(clip.encode_image(_nchw(x), normalize=True).numpy(), want_img)
  _assert_close(clip.encode_text(tokenize(texts), normalize=True).numpy(), want_txt)
  export_pytorch.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "img"),
                       "--part=image"])
  with pytest.raises(ValueError, match="no open_clip tokenizer"):
    torch_load.load_tokenizer(str(tmp_path / "img"))


def test_a_run_with_scanned_blocks_exports_what_it_computes(tmp_path):
  """model.scan_layers stores both towers' blocks stacked; the export unrolls them."""
  from big_contrast import methods
  c = tiny_config("siglip_digits", total_steps=1, mesh=[("data", 1)], **{
      "model.scan_layers": True, "model.image.depth": 2, "model.text.depth": 2,
      "eval.evaluators": ()})
  ts = train.train_and_evaluate(c, str(tmp_path / "run"))["train_state"]
  assert ts["params"]["image"]["blocks"]["block"]["Dense_0"]["kernel"].shape[0] == 2
  assert "block0" not in ts["params"]["image"] and "block0" not in ts["params"]["text"]
  export_pytorch.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
  clip = torch_load.load_torch(str(tmp_path / "out"))
  method = run_lib.build_method(c, methods.Schedule(1, 1))
  tokens = method.tokenizer.batch(["a thin 3", "A BOLD, slanted seven!!", ""])
  x = method.eval_view(np.random.RandomState(7).randint(0, 256, (3, 8, 8, 3)).astype(np.uint8))
  want_img, want_txt = method.model.apply(
      {"params": ts["params"], **ts["state"]["model"]}, x, tokens, train_image=False,
      train_text=False, method=type(method.model).embed)
  _assert_close(clip.encode_image(_nchw(x), normalize=True).numpy(), want_img)
  _assert_close(clip.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy(),
                want_txt)


def test_lit_locks_an_image_tower_loaded_from_torchvision_weights(tmp_path):
  """init_from.torch: a torchvision ResNet-18's weights (its fc dropped) become LiT's locked
  image tower; after training, the tower still computes what the torchvision model does."""
  import torchvision
  from safetensors.torch import save_file
  from big_contrast import methods
  tv = torchvision.models.resnet18()
  tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
  tv.maxpool = torch.nn.Identity()
  for name, buf in tv.named_buffers():  # BatchNorm statistics that are not the init's.
    if name.endswith("running_var"):
      buf.uniform_(0.5, 1.5)
    elif name.endswith("running_mean"):
      buf.normal_(0, 0.3)
  path = str(tmp_path / "rn18.safetensors")
  save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, path)
  c = tiny_config("lit_digits", total_steps=2, mesh=[("data", 1)], **{
      "model.image.width": 64, "model.image.depth": 18, "eval.evaluators": (),
      "init_from.workdir": "",
      "init_from.torch.path": path, "init_from.torch.library": "torchvision",
      "init_from.torch.model": "model.image",
      "init_from.rules": ((r"params/image/(.*)", r"params/\1"),
                          (r"state/model/batch_stats/image/(.*)",
                           r"state/model/batch_stats/\1"))})
  ts = train.train_and_evaluate(c, str(tmp_path / "lit"))["train_state"]
  method = run_lib.build_method(c, methods.Schedule(2, 1))
  images = np.random.RandomState(6).randint(0, 256, (4, 8, 8, 3)).astype(np.uint8)
  tv.fc = torch.nn.Identity()
  want = tv.eval()(_nchw(method.eval_view(images))).numpy()
  _assert_close(method.features(ts["params"], ts["state"], images), want)

  c.init_from.torch.library = "timm"
  with pytest.raises(ValueError, match="needs config.model.image.name='vit'"):
    train.train_and_evaluate(c, str(tmp_path / "wrong"))
  c.init_from.torch.library = "torchvision"
  c.model.image.depth = 50
  with pytest.raises(ValueError, match="not the architecture expected"):
    train.train_and_evaluate(c, str(tmp_path / "wrong"))


# The export command on a run stored in bfloat16 (ViT MoCo v3: backbone, head and predictor),
# with checkpoints at steps 1 and 2.

@pytest.fixture(name="bf16_run", scope="module")
def bf16_run_fixture(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("bf16_run"))
  c = tiny_config("moco_v3_digits", total_steps=2, mesh=[("data", 1)], **{
      "model.param_dtype": "bfloat16", "checkpoint.every_steps": 1, "eval.evaluators": ()})
  train.train_and_evaluate(c, workdir)
  return workdir


def _fatal(capsys) -> str:
  """The one FATAL line the command wrote to stderr."""
  lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FATAL")]
  assert len(lines) == 1, lines
  return lines[0]


def test_cli_exports_a_bf16_run_as_bf16_with_its_step(bf16_run, tmp_path):
  from safetensors.torch import load_file
  out = str(tmp_path / "out")
  export_pytorch.main(["--workdir", bf16_run, "--out", out, "--pt"])
  with open(os.path.join(out, "export.json")) as f:
    assert json.load(f)["step"] == 2  # The latest, by number.
  for stem in ("model", "head", "predictor"):
    st, pt = load_file(os.path.join(out, f"{stem}.safetensors")), torch.load(
        os.path.join(out, f"{stem}.pt"), weights_only=True)
    assert set(st) == set(pt)
    for k in st:
      assert pt[k].dtype == st[k].dtype and torch.equal(pt[k], st[k]), (stem, k)
  assert load_file(os.path.join(out, "model.safetensors"))["cls_token"].dtype == torch.bfloat16
  torch_load.load_torch(out)  # Loads strictly into the float32 timm model.
  # Exported again into the same directory, without --pt: the old .pt files go.
  export_pytorch.main(["--workdir", bf16_run, "--out", out, "--step=1"])
  with open(os.path.join(out, "export.json")) as f:
    assert json.load(f)["step"] == 1
  assert not os.path.exists(os.path.join(out, "model.pt"))


def test_a_failed_export_leaves_no_files(bf16_run, tmp_path, monkeypatch):
  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(torch, "save", disk_full)
  with pytest.raises(OSError, match="No space left"):
    export_pytorch.main(["--workdir", bf16_run, "--out", str(tmp_path / "out"), "--pt"])
  assert os.listdir(tmp_path) == []  # Neither the export nor its staging directory.
  # A previous export in --out stays whole.
  export_pytorch.main(["--workdir", bf16_run, "--out", str(tmp_path / "out"), "--step=1"])
  before = sorted(os.listdir(tmp_path / "out"))
  with pytest.raises(OSError, match="No space left"):
    export_pytorch.main(["--workdir", bf16_run, "--out", str(tmp_path / "out"), "--pt"])
  assert sorted(os.listdir(tmp_path)) == ["out"]
  assert sorted(os.listdir(tmp_path / "out")) == before
  with open(tmp_path / "out" / "export.json") as f:
    assert json.load(f)["step"] == 1


def test_export_usage_errors_name_the_flag(bf16_run, tmp_path, capsys):
  out = str(tmp_path / "out")
  for argv, message in [
      (["--workdir", bf16_run, "--step=5"], r"^FATAL --step=5 is not a checkpoint .* \[1, 2\]"),
      (["--workdir", str(tmp_path / "nowhere")], r"^FATAL --workdir=.*nowhere' does not exist"),
      (["--workdir", str(tmp_path)], r"^FATAL --workdir=.* has no config.json")]:
    with pytest.raises(SystemExit) as e:
      export_pytorch.main(argv + ["--out", out])
    assert e.value.code == 2
    line = _fatal(capsys)
    assert re.search(message, line) and "--config" not in line, line
  assert not os.path.exists(out)


def test_a_checkpoint_that_differs_from_its_digest_is_not_exported(bf16_run, tmp_path, capsys):
  damaged = damaged_copy(bf16_run, str(tmp_path / "damaged"), 2)
  with pytest.raises(SystemExit) as e:
    export_pytorch.main(["--workdir", damaged, "--out", str(tmp_path / "out")])
  assert e.value.code == 1
  line = _fatal(capsys)
  assert re.search(r"CorruptCheckpoint: Checkpoint 2 .* 1 of \d+ arrays differ from the digest",
                   line) and "--step=1" in line, line
  assert sorted(os.listdir(tmp_path)) == ["damaged"]
