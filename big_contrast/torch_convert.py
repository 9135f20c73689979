"""Flax variables <-> PyTorch state dicts: torchvision ResNets, timm ViTs, open_clip two-towers.

Pure numpy: converting needs no torch (tools/export_pytorch.py writes safetensors; the tests
load them into torchvision, timm and open_clip). Both directions read one table per
architecture: a list of Entry(flax paths, torch keys, to_torch, from_torch), so export and
import cannot drift apart, and a checkpoint of another architecture fails on the first
missing or left-over name.

Flax variables are flat dicts {"params/<module path>": array, "batch_stats/<module path>":
array} of one module (a backbone, a head, a two-tower model). Layouts converted:
  conv kernel [H, W, in, out]            <-> weight [out, in, H, W]
  Dense kernel [in, out]                 <-> Linear weight [out, in]
  attention q/k/v kernels [D, heads, hd] <-> packed qkv / in_proj_weight [3D, D] (heads major)
  attention out kernel [heads, hd, D]    <-> proj / out_proj weight [D, D]
  BatchNorm scale, bias, mean, var       <-> weight, bias, running_mean, running_var (+ a
                                             num_batches_tracked counter on the torch side)
"""
import dataclasses
from typing import Callable

import numpy as np

from big_contrast.models.resnet import DEPTHS as RESNET_DEPTHS
from big_contrast.models.vit import posemb_sincos_2d

LN_EPS = 1e-6      # flax.linen.LayerNorm's; timm's ViT default, open_clip needs it set.
GELU = "tanh"      # flax.linen.gelu approximates with tanh; torch's nn.GELU default is erf.


@dataclasses.dataclass(frozen=True)
class Entry:
  """Arrays `flax` (paths) <-> arrays `torch` (state-dict keys)."""
  flax: tuple
  torch: tuple
  to_torch: Callable
  from_torch: Callable


def _same(f, t):
  return Entry((f,), (t,), lambda x: (x,), lambda x: (x,))


def _conv(f, t, bias=False):
  out = [Entry((f"params/{f}/kernel",), (f"{t}.weight",), lambda k: (k.transpose(3, 2, 0, 1),),
               lambda w: (w.transpose(2, 3, 1, 0),))]
  return out + ([_same(f"params/{f}/bias", f"{t}.bias")] if bias else [])


def _dense(f, t, bias=True):
  out = [Entry((f"params/{f}/kernel",), (f"{t}.weight",), lambda k: (k.T,), lambda w: (w.T,))]
  return out + ([_same(f"params/{f}/bias", f"{t}.bias")] if bias else [])


def _layer_norm(f, t):
  return [_same(f"params/{f}/scale", f"{t}.weight"), _same(f"params/{f}/bias", f"{t}.bias")]


def _batch_norm(f, t, affine=True):
  counter = Entry((), (f"{t}.num_batches_tracked",), lambda: (np.zeros((), np.int64),),
                  lambda n: ())
  return ((_layer_norm(f, t) if affine else []) +
          [_same(f"batch_stats/{f}/mean", f"{t}.running_mean"),
           _same(f"batch_stats/{f}/var", f"{t}.running_var"), counter])


def _heads_to_rows(k):
  """[D, heads, hd] kernel -> [heads*hd, D] torch weight rows (head major)."""
  return k.reshape(k.shape[0], -1).T


def _qkv(f, t_weight, t_bias, heads, names=("query", "key", "value")):
  """Flax q/k/v DenseGeneral kernels and biases <-> one packed torch weight and bias."""
  kernels = tuple(f"params/{f}/{n}/kernel" for n in names)
  biases = tuple(f"params/{f}/{n}/bias" for n in names)

  def unpack_w(w):
    d = w.shape[1]
    return tuple(x.T.reshape(d, heads, -1) for x in np.split(w, len(names)))

  def unpack_b(b):
    return tuple(x.reshape(heads, -1) for x in np.split(b, len(names)))

  return [Entry(kernels, (t_weight,), lambda *k: (np.concatenate([_heads_to_rows(x) for x in k]),),
                unpack_w),
          Entry(biases, (t_bias,), lambda *b: (np.concatenate([x.reshape(-1) for x in b]),),
                unpack_b)]


def _attn_out(f, t, heads):
  return [Entry((f"params/{f}/out/kernel",), (f"{t}.weight",),
                lambda k: (k.reshape(-1, k.shape[-1]).T,),
                lambda w: (w.T.reshape(heads, -1, w.shape[0]),)),
          _same(f"params/{f}/out/bias", f"{t}.bias")]


def _dense_heads(f, t, heads):
  """A DenseGeneral [D, heads, hd] (MAP head query) <-> a Linear [D, D]."""
  return [Entry((f"params/{f}/kernel",), (f"{t}.weight",), lambda k: (_heads_to_rows(k),),
                lambda w: (w.T.reshape(w.shape[1], heads, -1),)),
          Entry((f"params/{f}/bias",), (f"{t}.bias",), lambda b: (b.reshape(-1),),
                lambda b: (b.reshape(heads, -1),))]


def _convert(source: dict, entries, to_torch: bool) -> dict:
  """Applies `entries` in one direction; every name on both sides must be accounted for."""
  src, dst, fn = ("flax", "torch", "to_torch") if to_torch else ("torch", "flax", "from_torch")
  wanted = [k for e in entries for k in getattr(e, src)]
  missing = [k for k in wanted if k not in source]
  if missing:
    raise ValueError(f"not the architecture expected: {missing[:3]} missing (of "
                     f"{len(missing)}); the source has e.g. {sorted(source)[:3]}.")
  extra = sorted(set(source) - set(wanted))
  if extra:
    raise ValueError(f"not the architecture expected: {extra[:3]} (of {len(extra)}) have no "
                     f"counterpart in the {dst} model.")
  out = {}
  for e in entries:
    arrays = getattr(e, fn)(*(np.asarray(source[k]) for k in getattr(e, src)))
    out.update(zip(getattr(e, dst), (np.asarray(x) for x in arrays)))
  return out


def export(flat: dict, entries) -> dict:
  """Flax flat variables -> torch state dict (numpy arrays)."""
  return _convert(flat, entries, to_torch=True)


def import_(state_dict: dict, entries) -> dict:
  """Torch state dict (numpy arrays) -> Flax flat variables."""
  return _convert(state_dict, entries, to_torch=False)


# --- torchvision ResNet ------------------------------------------------------------------

def resnet_entries(depth: int, f: str = "") -> list:
  """models.ResNet (prefix `f`) <-> torchvision.models.resnet{depth} without its fc."""
  kind, stages = RESNET_DEPTHS[depth]
  convs = 3 if kind == "bottleneck" else 2
  entries = _conv(f + "stem_conv", "conv1") + _batch_norm(f + "stem_norm", "bn1")
  for i, blocks in enumerate(stages):
    for j in range(blocks):
      fb, tb = f"{f}stage{i + 1}_block{j + 1}", f"layer{i + 1}.{j}"
      for c in range(convs):
        entries += _conv(f"{fb}/Conv_{c}", f"{tb}.conv{c + 1}")
        entries += _batch_norm(f"{fb}/BatchNorm_{c}", f"{tb}.bn{c + 1}")
      if j == 0 and (i > 0 or kind == "bottleneck"):  # Shape changes: projected shortcut.
        entries += _conv(f"{fb}/proj", f"{tb}.downsample.0")
        entries += _batch_norm(f"{fb}/proj_norm", f"{tb}.downsample.1")
  return entries


def resnet_torchvision(cfg) -> dict:
  """How to build the torchvision model a models.ResNet config exports to (or fail why not)."""
  if cfg.depth not in (18, 34, 50, 101):
    raise ValueError(f"config.model.depth={cfg.depth}: torchvision has resnet18/34/50/101/152.")
  if cfg.get("width", 64) != 64:
    raise ValueError(f"config.model.width={cfg.width}: torchvision's ResNets have 64 channels "
                     "in the first stage; train with width=64 to export to torchvision.")
  setup = ["model.fc = torch.nn.Identity()"]
  if cfg.get("stem", "imagenet") == "cifar":  # solo-learn's CIFAR stem.
    setup = ["model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)",
             "model.maxpool = torch.nn.Identity()"] + setup
  return {"library": "torchvision", "constructor": f"torchvision.models.resnet{cfg.depth}",
          "kwargs": {}, "setup": setup,
          "output": "pooled features [B, C] (the fc classifier is replaced by Identity)"}


def backbone_torch(cfg, image_size: int) -> tuple:
  """(entries, how to build the torch model) of an image backbone config: ResNet ->
  torchvision, ViT -> timm."""
  if cfg.name == "resnet":
    return resnet_entries(cfg.depth), resnet_torchvision(cfg)
  if cfg.name == "vit":
    return vit_entries(vit_config(cfg), image_size), vit_timm(cfg, image_size)
  raise ValueError(f"config.model.name={cfg.name!r} has no PyTorch counterpart.")


# --- projection heads -> torch.nn.Sequential ---------------------------------------------

def mlp_head_entries(hidden: int, use_bn: bool, last_bn: bool, f: str = "") -> list:
  """models.MLPHead <-> nn.Sequential(Linear, [BatchNorm1d], ReLU, ..., Linear, [BatchNorm1d])."""
  entries, i = [], 0
  for h in range(hidden):
    entries += _dense(f"{f}hidden{h}", str(i), bias=not use_bn)
    i += 1
    if use_bn:
      entries += _batch_norm(f"{f}hidden{h}_norm", str(i))
      i += 1
    i += 1  # ReLU
  entries += _dense(f"{f}out", str(i), bias=not last_bn)
  if last_bn:
    entries += _batch_norm(f"{f}out_norm", str(i + 1), affine=False)
  return entries


def mlp_head_layers(flat: dict, hidden: int, use_bn: bool, last_bn: bool, f: str = "") -> list:
  """The nn.Sequential layers, as [name, *args], that `mlp_head_entries` loads into."""
  layers = []
  for h in range(hidden):
    d_in, d_out = flat[f"params/{f}hidden{h}/kernel"].shape
    layers.append(["Linear", int(d_in), int(d_out), not use_bn])
    if use_bn:
      layers.append(["BatchNorm1d", int(d_out), True])
    layers.append(["ReLU"])
  d_in, d_out = flat[f"params/{f}out/kernel"].shape
  layers.append(["Linear", int(d_in), int(d_out), not last_bn])
  if last_bn:
    layers.append(["BatchNorm1d", int(d_out), False])
  return layers


# --- timm VisionTransformer --------------------------------------------------------------

def _block_entries(fb, tb, heads, attn, norm1, norm2, mlp):
  """One transformer block: our Block <-> a torch block with the given module names."""
  a = f"{fb}/MultiHeadDotProductAttention_0"
  return (_layer_norm(f"{fb}/LayerNorm_0", f"{tb}.{norm1}") + attn(a) +
          _layer_norm(f"{fb}/LayerNorm_1", f"{tb}.{norm2}") +
          _dense(f"{fb}/Dense_0", f"{tb}.{mlp[0]}") + _dense(f"{fb}/Dense_1", f"{tb}.{mlp[1]}"))


def _vit_posemb(f, cfg, grid, torch_key):
  """Our position embeddings <-> a torch table; fixed sincos ones are written out as values
  (and on import must equal them)."""
  if cfg.posemb == "learn":
    return [_same(f"params/{f}pos_embedding", torch_key)]
  table = np.asarray(posemb_sincos_2d(*grid, cfg.width))

  def check(p):
    if not np.allclose(p, table, atol=1e-5):
      raise ValueError(f"{torch_key} is not the fixed 2D sincos embedding of this model "
                       "(config.model.posemb='sincos2d'); import into posemb='learn'.")
    return ()
  return [Entry((), (torch_key,), lambda: (table,), check)]


def vit_entries(cfg, image_size: int, f: str = "") -> list:
  """models.ViT (prefix `f`) <-> timm VisionTransformer built with `vit_timm(cfg)` kwargs."""
  heads, grid = cfg.heads, (image_size // cfg.patch_size,) * 2
  attn = lambda a, tb: _qkv(a, f"{tb}.attn.qkv.weight", f"{tb}.attn.qkv.bias", heads) + (
      _attn_out(a, f"{tb}.attn.proj", heads))
  entries = _conv(f + "embedding", "patch_embed.proj", bias=True)
  entries += _vit_posemb(f, cfg, grid, "pos_embed")
  if cfg.pool == "cls":
    entries.append(_same(f"params/{f}cls", "cls_token"))
  for i in range(cfg.depth):
    tb = f"blocks.{i}"
    entries += _block_entries(f"{f}block{i}", tb, heads, lambda a, tb=tb: attn(a, tb), "norm1",
                              "norm2", ("mlp.fc1", "mlp.fc2"))
  entries += _layer_norm(f + "norm", "norm")
  if cfg.pool == "map":
    m, a = f + "map_head", f + "map_head/MultiHeadDotProductAttention_0"
    entries += [_same(f"params/{m}/probe", "attn_pool.latent")]
    entries += _dense_heads(f"{a}/query", "attn_pool.q", heads)
    entries += _qkv(a, "attn_pool.kv.weight", "attn_pool.kv.bias", heads, ("key", "value"))
    entries += _attn_out(a, "attn_pool.proj", heads)
    entries += _layer_norm(f"{m}/LayerNorm_0", "attn_pool.norm")
    entries += _dense(f"{m}/Dense_0", "attn_pool.mlp.fc1") + _dense(f"{m}/Dense_1",
                                                                     "attn_pool.mlp.fc2")
  return entries


def vit_config(cfg):
  """The models.ViT a backbone config builds: its width, depth, heads, patch_size, pool and
  posemb, with the variant's defaults resolved by the model code itself."""
  from big_contrast import models
  return models.backbone(cfg)


# timm registry names of the standard ViTs: (variant size, patch, image size, MAP head) ->
# name (tests check they exist). Anything else is built from the generic ViT-B/16 entry
# with every architecture field given explicitly.
TIMM_NAMES = {
    ("Ti", 16, 224, False): "vit_tiny_patch16_224",
    ("S", 16, 224, False): "vit_small_patch16_224",
    ("S", 32, 224, False): "vit_small_patch32_224",
    ("B", 16, 224, False): "vit_base_patch16_224",
    ("B", 32, 224, False): "vit_base_patch32_224",
    ("B", 16, 384, False): "vit_base_patch16_384",
    ("L", 16, 224, False): "vit_large_patch16_224",
    ("L", 32, 224, False): "vit_large_patch32_224",
    ("B", 16, 224, True): "vit_base_patch16_siglip_224",   # timm's SigLIP towers: MAP head,
    ("B", 16, 256, True): "vit_base_patch16_siglip_256",   # tanh GELU, no class token.
    ("L", 16, 256, True): "vit_large_patch16_siglip_256",
}


def vit_timm(cfg, image_size: int) -> dict:
  """timm.create_model(name, **kwargs) that a models.ViT config loads into strictly."""
  v, size = vit_config(cfg), cfg.variant.split("/")[0]
  name = TIMM_NAMES.get((size, v.patch_size, image_size, v.pool == "map"),
                        "vit_base_patch16_224")
  kwargs = dict(img_size=image_size, patch_size=v.patch_size, embed_dim=v.width, depth=v.depth,
                num_heads=v.heads, mlp_ratio=4.0, qkv_bias=True, class_token=v.pool == "cls",
                no_embed_class=True, global_pool={"cls": "token", "gap": "avg", "map": "map"}[
                    v.pool], fc_norm=False, act_layer="gelu_tanh", num_classes=0)
  return {"library": "timm", "constructor": "timm.create_model", "name": name,
          "kwargs": kwargs, "setup": [],
          "output": "pooled features [B, width] (num_classes=0: no classifier)"}


# --- open_clip CLIP / CustomTextCLIP ----------------------------------------------------

def _open_clip_block(fb, tb, heads):
  return _block_entries(
      fb, tb, heads,
      lambda a: _qkv(a, f"{tb}.attn.in_proj_weight", f"{tb}.attn.in_proj_bias", heads) +
      _attn_out(a, f"{tb}.attn.out_proj", heads), "ln_1", "ln_2", ("mlp.c_fc", "mlp.c_proj"))


def _torch_prefixed(entries, prefix):
  return [dataclasses.replace(e, torch=tuple(prefix + k for k in e.torch)) for e in entries]


def _open_clip_vit(v, image_size):
  """open_clip's own VisionTransformer (visual.*) for a pool "cls" ViT.

  Its patch embedding has no bias and its class token gets a position: our conv bias is
  folded into the patch positions and the class token's position row is zero.
  """
  grid = (image_size // v.patch_size,) * 2
  n, width = grid[0] * grid[1], v.width
  if v.posemb == "learn":
    pos = ("params/image/pos_embedding",)
    table = lambda p: p.reshape(n, width)
  else:
    pos = ()
    table = lambda: np.asarray(posemb_sincos_2d(*grid, width)).reshape(n, width)

  def to_torch(bias, *rest):
    *p, cls = rest
    return (np.concatenate([np.zeros((1, width), bias.dtype), table(*p) + bias]),
            cls.reshape(width))

  def from_torch(p, cls):
    # The class token's position moves into the class token (a constant either way); the
    # conv bias comes back as 0 (folded into the positions, the two are indistinguishable).
    if not pos and not np.allclose(p[1:], table(), atol=1e-5):
      raise ValueError("visual.positional_embedding is not this model's fixed sincos table; "
                       "import into config.model.image.posemb='learn'.")
    return ((np.zeros((width,), p.dtype),) + ((p[1:].reshape(1, n, width),) if pos else ()) +
            ((cls + p[0]).reshape(1, 1, width),))

  entries = _conv("image/embedding", "visual.conv1")
  entries.append(Entry(("params/image/embedding/bias",) + pos + ("params/image/cls",),
                       ("visual.positional_embedding", "visual.class_embedding"), to_torch,
                       from_torch))
  for i in range(v.depth):
    entries += _open_clip_block(f"image/block{i}", f"visual.transformer.resblocks.{i}", v.heads)
  entries += _layer_norm("image/norm", "visual.ln_post")
  return entries + [_same("params/image_proj/kernel", "visual.proj")]


def _text_prefix(text) -> str:
  """open_clip.CLIP keeps a causal text tower's weights at the top level; a bidirectional one
  needs CustomTextCLIP (whose TextTransformer can mask padding), under text.*."""
  return "" if text.get("causal", True) else "text."


def two_tower_entries(image, text, image_size: int, sigmoid: bool) -> list:
  """models.TwoTower (ViT image tower) <-> the open_clip model of `two_tower_open_clip`.

  Image tower: pool "cls" -> open_clip's own ViT (visual.*); pool "map"/"gap" -> a timm ViT
  (visual.trunk.*, as vit_entries) and open_clip's linear head (visual.head.proj).
  """
  v = vit_config(image)
  if v.pool == "cls":
    entries = _open_clip_vit(v, image_size)
  else:
    entries = _torch_prefixed(vit_entries(v, image_size, "image/"), "visual.trunk.")
    entries += _dense("image_proj", "visual.head.proj", bias=False)
  t = _text_prefix(text)
  entries += [_same("params/text/embedding/embedding", f"{t}token_embedding.weight"),
              Entry(("params/text/pos_embedding",), (f"{t}positional_embedding",),
                    lambda p: (p[0],), lambda p: (p[None],))]
  for i in range(text.depth):
    entries += _open_clip_block(f"text/block{i}", f"{t}transformer.resblocks.{i}", text.heads)
  entries += _layer_norm("text/norm", f"{t}ln_final")
  entries.append(_same("params/text_proj/kernel", f"{t}text_projection"))
  entries.append(_same("params/t", "logit_scale"))
  if sigmoid:
    entries.append(_same("params/b", "logit_bias"))
  return entries


def two_tower_open_clip(model_cfg, tokenizer, image_size: int, sigmoid: bool) -> dict:
  """The open_clip model a TwoTower config maps onto exactly, or a ValueError why not.

  open_clip.CLIP for a causal text tower, open_clip.CustomTextCLIP for a bidirectional one
  (its TextTransformer masks padding once `use_pad_mask` is set, which its config cannot
  say: a setup line). A ViT image tower pooled other than by its class token becomes
  open_clip's timm adapter; open_clip passes no architecture kwargs to timm, so a setup line
  puts the timm ViT of `vit_timm` (every field explicit) and a head of the right width in.
  """
  if model_cfg.image.name != "vit":
    raise ValueError("open_clip export needs a ViT image tower (config.model.image.name="
                     f"'vit'), not {model_cfg.image.name!r}; export the image tower alone.")
  v, t = vit_config(model_cfg.image), model_cfg.text
  pools = {"last": "eos", "first": "first"}
  if t.get("pool", "last") not in pools:
    raise ValueError(f"config.model.text.pool={t.pool!r}: open_clip pools the text by "
                     f"'eos' or 'first' only (ours: {sorted(pools)}).")
  norm, act = {"eps": LN_EPS}, {"approximate": GELU}
  causal = t.get("causal", True)
  setup = [] if causal else ["model.text.use_pad_mask = True"]
  if v.pool == "cls":
    vision = {"image_size": image_size, "patch_size": v.patch_size, "width": v.width,
              "layers": v.depth, "head_width": v.width // v.heads, "mlp_ratio": 4.0,
              "no_ln_pre": True, "pool_type": "tok", "final_ln_after_pool": False,
              "act_kwargs": act, "norm_kwargs": norm}
  else:
    trunk = vit_timm(model_cfg.image, image_size)
    vision = {"image_size": image_size, "timm_model_name": trunk["name"], "timm_pool": "",
              "timm_proj": "linear", "timm_proj_bias": False}
    setup += [f"model.visual.trunk = timm.create_model({trunk['name']!r}, pretrained=False, "
              f"**{trunk['kwargs']!r})",
              f"model.visual.head.proj = torch.nn.Linear({v.width}, {model_cfg.embed_dim}, "
              "bias=False)"]
  config = {
      "embed_dim": model_cfg.embed_dim,
      "vision_cfg": vision,
      "text_cfg": {"context_length": tokenizer.length, "vocab_size": tokenizer.vocab_size,
                   "width": t.width, "heads": t.heads, "layers": t.depth, "mlp_ratio": 4.0,
                   "pad_id": tokenizer.pad_id, "eos_id": tokenizer.eos_id,
                   "pool_type": pools[t.get("pool", "last")], "no_causal_mask": not causal,
                   "proj_bias": False, "act_kwargs": act, "norm_kwargs": norm},
  }
  if sigmoid:
    config["init_logit_bias"] = 0.0  # Any value creates the parameter; the export sets it.
  return {"library": "open_clip",
          "constructor": "open_clip.CLIP" if causal else "open_clip.CustomTextCLIP",
          "kwargs": config, "setup": setup,
          "output": "encode_image / encode_text embeddings; logit_scale = log t"
                    + (", logit_bias = b" if sigmoid else "")}


# Where a method keeps its Flax model's other collections in the train state.
MODEL_STATE = "state/model/"


def flat_module(flat_state: dict, module: str) -> dict:
  """{"params/...", "batch_stats/..."} of `module` (e.g. "backbone", "encoder/backbone"; ""
  for the whole model) from a checkpoint's flat {"params/...", "state/..."}
  (init_from.read_source)."""
  out, module = {}, f"{module}/" if module else ""
  for path, x in flat_state.items():
    for src, dst in ((f"params/{module}", "params/"),
                     (f"{MODEL_STATE}batch_stats/{module}", "batch_stats/")):
      if path.startswith(src):
        out[dst + path[len(src):]] = x
  return out
