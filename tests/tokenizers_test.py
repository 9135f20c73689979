"""Tests of input_pipeline.tokenizers: the fixed-length contract, exact ids, config errors."""

import gzip
import pickle
import random
import sys

import ml_collections
import numpy as np
import pytest

from input_pipeline import tokenizers

LENGTH = 32
ROUND_TRIP_TEXTS = ("a photo of a cat", "A Photo of 3 dogs", "héllo wörld 7 🙂")
LONG_TEXT = "the quick brown fox jumps over the lazy dog " * 20

# Tiny CLIP merges, in rank order; merge r makes token id 512 + r.
CLIP_MERGES = ("h e", "l l", "he ll", "hell o</w>", "l d</w>", "o r", "w or", "wor ld</w>",
               "e l")
HE, LL, HELL, HELLO_W, LD_W, WORLD_W, EL = 512, 513, 514, 515, 516, 519, 520
CLIP_VOCAB = 512 + len(CLIP_MERGES) + 2
SOT, EOT = CLIP_VOCAB - 2, CLIP_VOCAB - 1


def char(c):
  """CLIP id of a printable ASCII byte: the vocabulary starts at "!" (33)."""
  return ord(c) - ord("!")


def end(c):
  """CLIP id of a word-final printable ASCII byte: after the 256 byte chars."""
  return 256 + char(c)


# Fixtures: files are written once per module.


def sp_corpus():
  words = ("a photo of the cat dog bird car tree house red blue green small big running on "
           "grass in with and quick brown fox jumps over lazy A Photo The Dog héllo wörld "
           "🙂 😀 café 0 1 2 3 4 5 6 7 8 9 , . !").split()
  rng = random.Random(0)
  return [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(400)]


@pytest.fixture(name="sp_paths", scope="module")
def sp_paths_fixture(tmp_path_factory):
  """Three tiny SentencePiece models: with a pad id, without, without pad and eos."""
  spm = pytest.importorskip("sentencepiece")
  tmp = tmp_path_factory.mktemp("sp")
  corpus = tmp / "corpus.txt"
  corpus.write_text("\n".join(sp_corpus()), encoding="utf-8")
  variants = {"sp_pad": dict(pad_id=3), "sp_nopad": {}, "sp_noeos": dict(bos_id=-1, eos_id=-1)}
  paths = {}
  for name, ids in variants.items():
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp / name), vocab_size=150,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, **ids)
    paths[name] = str(tmp / f"{name}.model")
  return paths


@pytest.fixture(name="merges_path", scope="module")
def merges_path_fixture(tmp_path_factory):
  pytest.importorskip("regex")
  path = tmp_path_factory.mktemp("clip") / "merges.txt.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(CLIP_MERGES) + "\n")
  return str(path)


def make(kind, request, length=LENGTH, **extra):
  """A tokenizer through get_tokenizer; sentencepiece/clip fixtures only when needed."""
  if kind == "bytes":
    cfg = dict(name="bytes")
  elif kind == "clip_bpe":
    cfg = dict(name="clip_bpe", path=request.getfixturevalue("merges_path"))
  else:
    cfg = dict(name="sentencepiece", path=request.getfixturevalue("sp_paths")[kind])
  cfg = ml_collections.ConfigDict(dict(cfg, length=length, **extra))
  return tokenizers.get_tokenizer(cfg)


KINDS = ("bytes", "sp_pad", "sp_nopad", "sp_noeos", "clip_bpe")


def assert_contract(tok, ids):
  """Fixed length, int32, ids in range, [bos] content eos pad...: pad only at the end."""
  assert ids.shape == (tok.length,) and ids.dtype == np.int32
  assert ((ids >= 0) & (ids < tok.vocab_size)).all()
  n = int((ids != tok.pad_id).sum())
  assert (ids[n:] == tok.pad_id).all(), "pad inside the content"
  assert ids[n - 1] == tok.eos_id, "the last non-pad token is not eos"
  start = 0 if tok.bos_id is None else 1
  assert tok.bos_id is None or ids[0] == tok.bos_id
  content = ids[start:n - 1]
  assert tok.eos_id not in content and tok.bos_id not in content


# The contract, for every tokenizer.


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", ("", "x", *ROUND_TRIP_TEXTS, LONG_TEXT, "!?!! ¡¿ \x00\t"))
def test_contract(kind, text, request):
  tok = make(kind, request)
  assert_contract(tok, tok(text))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_text_gives_only_special_tokens(kind, request):
  tok = make(kind, request)
  specials = [tok.eos_id] if tok.bos_id is None else [tok.bos_id, tok.eos_id]
  expected = specials + [tok.pad_id] * (tok.length - len(specials))
  np.testing.assert_array_equal(tok(""), expected)
  assert tok.decode(tok("")) == ""


@pytest.mark.parametrize("kind", KINDS)
def test_truncation_keeps_first_tokens_and_eos_last(kind, request):
  tok = make(kind, request, length=8)
  ids = tok(LONG_TEXT)
  assert_contract(tok, ids)
  assert (ids != tok.pad_id).all()  # Full: no padding at all.
  start = 0 if tok.bos_id is None else 1
  content = list(tok.encode(LONG_TEXT))
  assert len(content) > 8
  np.testing.assert_array_equal(ids[start:-1], content[:8 - start - 1])
  # The shortest length still ends with eos.
  assert make(kind, request, length=2)(LONG_TEXT)[-1] == tok.eos_id


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(kind, text, request):
  tok = make(kind, request)
  ids = tok(text)
  assert (ids == tok.pad_id).any(), "the text must fit for an exact round trip"
  assert tok.decode(ids) == (text.lower() if kind == "clip_bpe" else text)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_stacks_rows(kind, request):
  tok = make(kind, request)
  texts = ["", *ROUND_TRIP_TEXTS, LONG_TEXT]
  batch = tok.batch(texts)
  assert batch.shape == (len(texts), LENGTH) and batch.dtype == np.int32
  np.testing.assert_array_equal(batch, np.stack([tok(t) for t in texts]))
  assert tok.batch([]).shape == (0, LENGTH)


@pytest.mark.parametrize("kind", KINDS)
def test_pickles_for_grain_workers(kind, request):
  tok = make(kind, request)
  copy = pickle.loads(pickle.dumps(tok))
  for text in (*ROUND_TRIP_TEXTS, LONG_TEXT):
    np.testing.assert_array_equal(copy(text), tok(text))


# Bytes.


def test_bytes_ids_are_utf8_bytes_plus_two(request):
  tok = make("bytes", request, length=6)
  assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (258, 0, 1, None)
  np.testing.assert_array_equal(tok("Hé"), [ord("H") + 2, 0xC3 + 2, 0xA9 + 2, 1, 0, 0])
  np.testing.assert_array_equal(tok("\x00\xff"), [2, 0xC3 + 2, 0xBF + 2, 1, 0, 0])
  lower = make("bytes", request, length=8, lower=True)
  assert lower.decode(lower("HéLLO")) == "héllo"


# SentencePiece.


@pytest.mark.parametrize("kind, pad, eos, extra", [
    ("sp_pad", 3, 2, 0),       # The model's pad and eos.
    ("sp_nopad", "n", 2, 1),   # An extra pad id after the pieces.
    ("sp_noeos", "n+1", "n", 2),  # Extra eos, then extra pad.
])
def test_sentencepiece_special_ids(kind, pad, eos, extra, request):
  spm = pytest.importorskip("sentencepiece")
  tok = make(kind, request)
  sp = spm.SentencePieceProcessor(model_file=request.getfixturevalue("sp_paths")[kind])
  n = sp.get_piece_size()
  resolve = {"n": n, "n+1": n + 1}
  assert tok.pad_id == resolve.get(pad, pad) and tok.eos_id == resolve.get(eos, eos)
  assert tok.vocab_size == n + extra and tok.bos_id is None
  text = ROUND_TRIP_TEXTS[0]
  content = sp.encode(text, out_type=int)
  expected = content + [tok.eos_id] + [tok.pad_id] * (LENGTH - len(content) - 1)
  np.testing.assert_array_equal(tok(text), expected)


def test_sentencepiece_lower(request):
  tok = make("sp_nopad", request, lower=True)
  assert tok.decode(tok("A Photo Of")) == "a photo of"


# CLIP BPE: ids worked out by hand from CLIP_MERGES.


def test_clip_vocabulary_layout(request):
  tok = make("clip_bpe", request)
  assert tok.vocab_size == CLIP_VOCAB == 523
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (SOT, EOT, 0) == (521, 522, 0)


@pytest.mark.parametrize("text, expected", [
    # Cleaned (whitespace collapsed, lower-cased), split into words; merges
    # 0-3 make "hello</w>", 4-7 "world</w>"; "!" alone is "!</w>".
    ("  Hello \n World!", [HELLO_W, WORLD_W, end("!")]),
    # By rank, not left to right: "l l" (1) before "e l" (8): e ll o</w>,
    # where a leftmost merge would make "el".
    ("ello", [char("e"), LL, end("o")]),
    ("el", [char("e"), end("l")]),  # "e l" does not apply to "l</w>".
    ("elx", [EL, end("x")]),
    # Occurrences merge left to right without overlap: ll ll l</w>.
    ("lllll", [LL, LL, end("l")]),
    # "</w>" is part of the last symbol: "l l</w>" is no merge, so no "hell".
    ("hell", [HE, char("l"), end("l")]),
    ("held", [HE, LD_W]),
    # Contractions, single digits and punctuation runs are words of their own.
    ("it's 42", [char("i"), end("t"), char("'"), end("s"), end("4"), end("2")]),
    # HTML entities are unescaped twice.
    ("fish &amp;amp; chips", [char("f"), char("i"), char("s"), end("h"), end("&"),
                              char("c"), char("h"), char("i"), char("p"), end("s")]),
    # Bytes outside printable Latin-1 take chars 256+: "€" = e2 82 ac gives
    # "â" (vocabulary position 158), chr(256 + 36) for 0x82 (188 + 36 = 224),
    # and "¬</w>" (256 + 105).
    ("€", [158, 224, 361]),
])
def test_clip_bpe_ids(text, expected, request):
  tok = make("clip_bpe", request)
  ids = tok(text)
  assert_contract(tok, ids)
  np.testing.assert_array_equal(ids[:len(expected) + 2], [SOT, *expected, EOT])


def test_clip_num_merges_limits_the_vocabulary(request):
  tok = make("clip_bpe", request, num_merges=3)  # h e, l l, he ll.
  assert tok.vocab_size == 512 + 3 + 2
  np.testing.assert_array_equal(tok("hello")[:4], [tok.bos_id, HELL, end("o"), tok.eos_id])


def test_clip_never_emits_pad_inside_content(request):
  # "!" is id 0, the pad: a bare "!" inside a word becomes "!</w>".
  tok = make("clip_bpe", request)
  ids = tok("wow!?")
  np.testing.assert_array_equal(
      ids[:7], [SOT, char("w"), char("o"), end("w"), end("!"), end("?"), EOT])
  assert tok.decode(ids) == "wow ! ?"


def test_clip_special_token_text_is_plain_text(request):
  tok = make("clip_bpe", request)
  ids = tok("<|endoftext|> x")
  assert_contract(tok, ids)
  assert tok.decode(ids) == "<| endoftext |> x"


def test_clip_uncased_option(request):
  tok = make("clip_bpe", request, lower=False)
  assert tok.decode(tok("Hello")) == "Hello"
  assert make("clip_bpe", request)("Hello")[1] == HELLO_W


# Configuration errors.


@pytest.mark.parametrize("overrides, key", [
    (dict(name="wordpiece"), "config.text.tokenizer.name"),
    (dict(length=1), "config.text.tokenizer.length"),
    (dict(length=0), "config.text.tokenizer.length"),
    (dict(length=None), "config.text.tokenizer.length"),
    (dict(length=8.0), "config.text.tokenizer.length"),
    (dict(name="sentencepiece"), "config.text.tokenizer.path"),
    (dict(name="clip_bpe", path=""), "config.text.tokenizer.path"),
    (dict(name="sentencepiece", path="/nonexistent/spm.model"), "does not exist"),
    (dict(name="clip_bpe", path="/nonexistent/bpe_simple_vocab_16e6.txt.gz"),
     "does not exist"),
])
def test_bad_config_raises_value_error(overrides, key):
  cfg = ml_collections.ConfigDict(dict(dict(name="bytes", length=16, path=""), **overrides))
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    tokenizers.get_tokenizer(cfg)


def test_unknown_name_lists_the_choices():
  with pytest.raises(ValueError, match="clip_bpe"):
    tokenizers.get_tokenizer(dict(name="wordpiece", length=16))


def test_missing_path_names_the_key():
  with pytest.raises(ValueError, match=r"config\.text\.tokenizer\.path=.*does not exist"):
    tokenizers.get_tokenizer(dict(name="clip_bpe", length=16, path="/no/such/file.gz"))


def test_bytes_is_the_default_and_needs_no_path():
  tok = tokenizers.get_tokenizer(dict(length=4))
  assert isinstance(tok, tokenizers.BytesTokenizer) and tok.length == 4


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "sentencepiece", None)  # Import fails.
  path = tmp_path / "spm.model"
  path.write_bytes(b"")
  with pytest.raises(ImportError, match=r"pip install big_contrast\[text\]"):
    tokenizers.get_tokenizer(dict(name="sentencepiece", length=16, path=str(path)))
