"""Text tokenizers: one string -> a fixed-length int32 array of token ids.

They run on the host inside the grain input pipeline, one text at a time, and
follow the contract of the text tower (big_contrast/models/text.py), which
masks `ids == pad_id` and pools the last non-pad position:

  * ids = [bos] + content + [eos] + [pad] * n, exactly `length` of them; bos
    only where the scheme has one (CLIP's <|startoftext|>);
  * a text too long keeps its first tokens and still ends with eos;
  * pad_id and eos never occur inside the content, so the last non-pad id is
    eos and the non-pad ids are a prefix;
  * every id is < vocab_size.

`config.text.tokenizer.name` picks one:

  "bytes"          UTF-8 bytes; needs no file (the default).
  "sentencepiece"  a SentencePiece model file (package `sentencepiece`).
  "clip_bpe"       the byte-level BPE of CLIP (Radford et al. 2021) from its
                   merges file bpe_simple_vocab_16e6.txt.gz (package `regex`;
                   `ftfy` is used if installed, see ClipBpeTokenizer).

Tokenizers are picklable, so grain can ship them to worker processes.
"""

import abc
import functools
import gzip
import html
import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from big_contrast import settings

NAMES = ("bytes", "sentencepiece", "clip_bpe")

# `config.text.tokenizer` (see get_tokenizer): lower and num_merges are optional.
SETTINGS = dict(
    name=settings.choice("bytes", NAMES), length=settings.integer(32, low=2), path="",
    lower=settings.optional(settings.boolean(None)),
    num_merges=settings.optional(settings.integer(None, low=1)))
_KEY = "config.text.tokenizer"
_FILES = {"sentencepiece": "a SentencePiece .model file",
          "clip_bpe": "CLIP's BPE merges file (bpe_simple_vocab_16e6.txt.gz)"}

# CLIP's vocabulary: 256 bytes, 256 word-final bytes, 48894 merges, 2 specials.
CLIP_NUM_MERGES = 49152 - 256 - 2
END_OF_WORD = "</w>"
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
# CLIP's pre-tokenizer: contractions, letter runs, single digits, runs of other
# non-space characters. Compiled with IGNORECASE like CLIP ("'S" when lower=False).
_CLIP_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"
# Bounds the per-word BPE cache: a long run sees an unbounded set of words.
_CACHE_SIZE = 1 << 16


class Tokenizer(abc.ABC):
  """Fixed-length tokenizer: `tok(text)` -> int32 [length].

  Subclasses give the ids to the constructor and implement `encode` (content
  ids, no special tokens) and `_decode_content`.

  Attributes:
    length: number of ids per text.
    vocab_size: every id is < vocab_size.
    pad_id: fills the positions after eos.
    eos_id: ends every text (the text tower pools it).
    bos_id: starts every text, or None for no start token.
  """

  def __init__(self, length: int, vocab_size: int, pad_id: int, eos_id: int,
               bos_id: int | None = None):
    if length < 2:
      raise ValueError(f"{_KEY}.length={length} is < 2: it must hold the end-of-text "
                       "token and some text; set it to e.g. 64.")
    self.length, self.vocab_size = int(length), int(vocab_size)
    self.pad_id, self.eos_id, self.bos_id = int(pad_id), int(eos_id), bos_id
    self._prefix = [] if bos_id is None else [int(bos_id)]
    self._room = max(self.length - len(self._prefix) - 1, 0)  # Content ids that fit.

  @abc.abstractmethod
  def encode(self, text: str) -> Sequence[int] | np.ndarray:
    """Content ids of `text`: no special tokens, no truncation."""

  @abc.abstractmethod
  def _decode_content(self, ids: list[int]) -> str:
    """Text of content ids (special ids already removed)."""

  def __call__(self, text: str) -> np.ndarray:
    """int32 [length]: [bos] + content (truncated) + [eos], then padding."""
    content = np.asarray(self.encode(text), np.int32)[:self._room]
    ids = np.full(self.length, self.pad_id, np.int32)
    start = len(self._prefix)
    ids[:start] = self._prefix
    ids[start:start + len(content)] = content
    ids[start + len(content)] = self.eos_id
    return ids

  def batch(self, texts: Iterable[str]) -> np.ndarray:
    """int32 [N, length]: one row per text."""
    rows = [self(text) for text in texts]
    return np.stack(rows) if rows else np.zeros((0, self.length), np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of one row of ids, without pad, bos and eos."""
    special = {self.pad_id, self.eos_id, self.bos_id}
    return self._decode_content([i for i in np.asarray(ids).tolist() if i not in special])


class BytesTokenizer(Tokenizer):
  """UTF-8 bytes: pad 0, eos 1, byte b -> b + 2 (vocab 258); no start token.

  Needs no file and covers every text; sequences are longer than with a
  subword vocabulary (one id per byte).
  """
  OFFSET = 2

  def __init__(self, length: int, lower: bool = False):
    super().__init__(length, vocab_size=256 + self.OFFSET, pad_id=0, eos_id=1)
    self.lower = lower

  def encode(self, text: str) -> np.ndarray:
    if self.lower:
      text = text.lower()
    # errors="replace": a lone surrogate in a web caption must not stop training.
    data = text.encode("utf-8", errors="replace")
    return np.frombuffer(data, np.uint8).astype(np.int32) + self.OFFSET

  def _decode_content(self, ids: list[int]) -> str:
    data = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < self.vocab_size)
    return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model; no start token (as SigLIP), the model's eos at the end.

  The model's ids are kept. eos is the model's eos id, pad its pad id; where
  the model defines none, the next free ids (piece count, then + 1) stand in
  for them and vocab_size grows to cover them. Encoding never emits control
  ids (pad, eos), so they stay out of the content.
  """

  def __init__(self, path: str, length: int, lower: bool = False):
    _require("sentencepiece", "sentencepiece")
    with open(path, "rb") as f:
      self._proto = f.read()
    self._sp = self._load(self._proto)
    self.lower = lower
    self.num_pieces = self._sp.get_piece_size()
    extra = self.num_pieces  # The next unused id.
    eos_id = self._sp.eos_id()
    if eos_id < 0:
      eos_id, extra = extra, extra + 1
    pad_id = self._sp.pad_id()
    if pad_id < 0:
      pad_id, extra = extra, extra + 1
    super().__init__(length, vocab_size=extra, pad_id=pad_id, eos_id=eos_id)

  @staticmethod
  def _load(proto: bytes):
    spm = _require("sentencepiece", "sentencepiece")
    return spm.SentencePieceProcessor(model_proto=proto)

  def __getstate__(self) -> dict[str, Any]:
    # The processor is a C++ object: ship the model bytes and rebuild it.
    return {k: v for k, v in self.__dict__.items() if k != "_sp"}

  def __setstate__(self, state: dict[str, Any]):
    self.__dict__.update(state)
    self._sp = self._load(self._proto)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text.lower() if self.lower else text, out_type=int)

  def _decode_content(self, ids: list[int]) -> str:
    return self._sp.decode([i for i in ids if 0 <= i < self.num_pieces])


class ClipBpeTokenizer(Tokenizer):
  """CLIP's byte-level BPE (OpenAI CLIP / open_clip `SimpleTokenizer`).

  Text is cleaned (ftfy.fix_text if the `ftfy` package is installed, else
  skipped; HTML entities unescaped twice; whitespace collapsed and stripped),
  lower-cased and split into words by `_CLIP_SPLIT`. Each word's UTF-8 bytes
  become printable chars (`_byte_chars`), the last one marked with "</w>", and
  the BPE merges are applied lowest rank first until none applies.

  Vocabulary: the 256 byte chars, the same with "</w>", one token per merge,
  then <|startoftext|> and <|endoftext|> (with CLIP's file: 49408 ids, sot
  49406, eot 49407). Output: [sot] + tokens + [eot], padded with 0 like CLIP.

  Differences from CLIP, both so that the text tower's mask and "last" pooling
  stay right:
    * id 0 is the byte char "!" as well as the pad. A bare "!" token inside a
      word (e.g. from "!?" when no merge covers it) becomes "!</w>", so "!?"
      decodes as "! ?"; CLIP would emit 0 there, which reads as padding.
    * "<|startoftext|>" / "<|endoftext|>" in the text are ordinary text, not
      the special ids, so a caption cannot end or restart the sequence.
  Without ftfy, texts with mojibake or odd Unicode tokenize differently from
  CLIP with ftfy; install it for parity.
  """

  def __init__(self, path: str, length: int, num_merges: int = CLIP_NUM_MERGES,
               lower: bool = True):
    _clip_split()  # Fails now, not in the pipeline, if `regex` is missing.
    self.lower = lower
    self._byte_chars, vocab_order = _byte_chars()
    merges = _read_merges(path, num_merges)
    tokens = (vocab_order + [c + END_OF_WORD for c in vocab_order] +
              ["".join(m) for m in merges] + [START_OF_TEXT, END_OF_TEXT])
    self._tokens = tokens
    self._ids = {t: i for i, t in enumerate(tokens)}
    self._ranks = {m: r for r, m in enumerate(merges)}
    self._char_to_byte = {c: b for b, c in enumerate(self._byte_chars)}
    self._cache: dict[str, list[int]] = {}
    pad_id = 0
    self._pad_stand_in = self._ids[tokens[pad_id] + END_OF_WORD]
    super().__init__(length, vocab_size=len(tokens), pad_id=pad_id,
                     eos_id=len(tokens) - 1, bos_id=len(tokens) - 2)

  def encode(self, text: str) -> list[int]:
    text = _clip_clean(text)
    if self.lower:
      text = text.lower()
    ids = []
    for word in _clip_split().findall(text):
      ids.extend(self._word_ids(word))
    return ids

  def _word_ids(self, word: str) -> list[int]:
    ids = self._cache.get(word)
    if ids is None:
      ids = [self._ids[s] for s in self._bpe(word)]
      ids = [self._pad_stand_in if i == self.pad_id else i for i in ids]
      if len(self._cache) >= _CACHE_SIZE:
        self._cache.clear()
      self._cache[word] = ids
    return ids

  def _bpe(self, word: str) -> list[str]:
    """The BPE symbols of one word."""
    symbols = [self._byte_chars[b] for b in word.encode("utf-8", errors="replace")]
    symbols[-1] += END_OF_WORD
    while len(symbols) > 1:
      best = min(zip(symbols, symbols[1:]), key=lambda p: self._ranks.get(p, float("inf")))
      if best not in self._ranks:
        break
      symbols = _merge(symbols, best)
    return symbols

  def _decode_content(self, ids: list[int]) -> str:
    chars = "".join(self._tokens[i] for i in ids if 0 <= i < self.bos_id)
    text = bytes(self._char_to_byte[c] for c in chars).decode("utf-8", errors="replace")
    return text.replace(END_OF_WORD, " ").strip()

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_cache": {}}  # The cache is cheap to rebuild.


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
  """Merges every occurrence of `pair`, left to right, non-overlapping."""
  out, i = [], 0
  while i < len(symbols):
    if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
      out.append(symbols[i] + symbols[i + 1])
      i += 2
    else:
      out.append(symbols[i])
      i += 1
  return out


@functools.cache
def _byte_chars() -> tuple[list[str], list[str]]:
  """CLIP's reversible byte -> char table, and the byte chars in vocabulary order.

  Bytes that are printable Latin-1 characters ("!".."~", "¡".."¬", "®".."ÿ")
  stand for themselves; the other 68 (controls, space, NBSP, soft hyphen) take
  chr(256), chr(257), ... in byte order, so that BPE symbols are printable and
  never contain whitespace. The vocabulary lists the printable bytes first.

  Returns:
    (char of byte b at index b, the 256 chars in vocabulary order).
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  char = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
  return [char[b] for b in range(256)], [char[b] for b in printable + others]


def _read_merges(path: str, num_merges: int) -> list[tuple[str, str]]:
  """The first `num_merges` merges of a merges file (gzip'd if it ends in .gz).

  The first line is a header; each other line is "a b", in rank order.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")[1:]
  merges = []
  for line in lines:
    if len(merges) == num_merges:
      break
    parts = line.split()
    if not parts:
      continue
    if len(parts) != 2:
      raise ValueError(f"{path}: merge line {line!r} is not two symbols 'a b'.")
    merges.append((parts[0], parts[1]))
  return merges


def _clip_clean(text: str) -> str:
  fix_text = _ftfy_fix_text()
  if fix_text is not None:
    text = fix_text(text)
  # Twice: web captions are often escaped twice ("&amp;amp;").
  text = html.unescape(html.unescape(text))
  return " ".join(text.split())


@functools.cache
def _ftfy_fix_text():
  try:
    import ftfy  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return ftfy.fix_text


@functools.cache
def _clip_split():
  # Module-level and cached: the tokenizer pickles without a compiled pattern.
  regex = _require("regex", "clip_bpe")
  return regex.compile(_CLIP_SPLIT, regex.IGNORECASE)


def _require(module: str, name: str):
  """Imports an optional dependency, or says how to install it."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"{_KEY}.name={name!r} needs the `{module}` package: "
                      f"pip install big_contrast[text] (or pip install {module}).") from e


def get_tokenizer(cfg: Mapping[str, Any]) -> Tokenizer:
  """The tokenizer of `config.text.tokenizer`.

  Args:
    cfg: ConfigDict or dict with keys name ("bytes" (default), "sentencepiece"
      or "clip_bpe"), length (int >= 2, ids per text), path (the model or
      merges file; not used by "bytes"), optional lower (lower-case the text;
      default True for clip_bpe, else False) and, for clip_bpe, optional
      num_merges (default CLIP's 48894).

  Returns:
    A Tokenizer.

  Raises:
    ValueError: unknown name, length < 2, or a missing path.
  """
  name = cfg.get("name") or "bytes"
  if name not in NAMES:
    raise ValueError(f"{_KEY}.name={name!r} is unknown; choose one of {NAMES}.")
  length = cfg.get("length")
  if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
    raise ValueError(f"{_KEY}.length={length!r}: set it to an int >= 2 (the fixed number "
                     "of token ids per text, end-of-text included), e.g. 64.")
  lower = cfg.get("lower")
  if name == "bytes":
    return BytesTokenizer(length, lower=bool(lower))
  path = cfg.get("path")
  if not path:
    raise ValueError(f"{_KEY}.path is not set: name={name!r} needs {_FILES[name]}; "
                     f"set {_KEY}.path to it.")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{_KEY}.path={path!r} does not exist; set it to {_FILES[name]}.")
  if name == "sentencepiece":
    return SentencePieceTokenizer(path, length, lower=bool(lower))
  num_merges = cfg.get("num_merges")
  return ClipBpeTokenizer(path, length,
                          num_merges=CLIP_NUM_MERGES if num_merges is None else num_merges,
                          lower=True if lower is None else bool(lower))
