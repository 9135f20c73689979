"""Grain pipelines: seeded, resumable training batches and padded eval passes.

A training batch is a pure function of (seed, step). The examples form an
infinite stream of epochs, each a fresh seeded permutation of the source; the
global batch at step s is stream positions [s*B, (s+1)*B). Epochs run back to
back and nothing is dropped, so a batch may straddle two epochs while every
example is still seen exactly once per epoch. Process p of P receives rows
[p*b, (p+1)*b), b = B/P, of that global batch and reads only those: the global
batch does not depend on P, and a checkpoint needs only the step to resume.
"""

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from input_pipeline import records


Batch = dict[str, np.ndarray]
Source = Sequence[dict[str, Any]]  # Random access: len() and [i].

# Each element is a whole batch: a few in flight overlap host decoding with
# the device step without holding many batches of large images in memory.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)


def _process_batches(examples: grain.MapDataset, global_batch_size: int,
                     process_index: int, process_count: int) -> grain.MapDataset:
  """This process's local batches: rows [p*b, (p+1)*b) of every global batch."""
  if global_batch_size % process_count:
    raise ValueError(
        f"config.batch_size={global_batch_size} is not divisible by the "
        f"process count {process_count}.")
  # Global batch s is local batches s*P ... s*P+P-1 in order, so process p
  # takes every P-th batch starting at p.
  return examples.batch(global_batch_size // process_count)[
      process_index::process_count]


class TrainBatches:
  """Local training batches indexed by step; see the module docstring.

  `replaced`: how many examples of the batches `iterate` has given stood in for an unusable
  record (records.REPLACED, which it takes out of each batch, logging each such record once
  in this process: the workers that decode write to no run's log).
  """

  def __init__(self, batches: grain.MapDataset, num_workers: int):
    self._batches = batches
    self._num_workers = num_workers
    self.replaced = 0
    self._logged = set()  # The unusable records logged so far.

  def __getitem__(self, step: int) -> Batch:
    return self._batches[step]

  def iterate(self, start_step: int = 0) -> Iterator[Batch]:
    """Batches of steps start_step, start_step + 1, ... prefetched. Closing the iterator
    stops the worker processes."""
    batches = self._batches[start_step:].to_iter_dataset(_READ_OPTIONS)
    if self._num_workers:
      # Grain workers read absl flags, which raise if never parsed (as when
      # the library runs outside absl.app, e.g. under pytest).
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      batches = batches.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self._num_workers))
    return self._counted(iter(batches))

  def _counted(self, batches) -> Iterator[Batch]:
    try:
      for batch in batches:
        self.replaced += records.count_replaced(batch.pop(records.REPLACED, ()), self._logged)
        yield batch
    finally:
      getattr(batches, "close", lambda: None)()


def with_text(tokenizer, example: dict[str, Any],
              rng: np.random.Generator | None = None) -> dict[str, Any]:
  """Replaces an image-text example's "captions" by "text", the token ids of one caption.

  A random caption when `rng` is given (training: a fresh pick every epoch), else the first.
  """
  captions = example["captions"]
  i = int(rng.integers(len(captions))) if rng is not None else 0
  out = {k: v for k, v in example.items() if k != "captions"}
  out["text"] = tokenizer(captions[i])
  return out


def train_batches(source: Source, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  num_workers: int = 0, tokenizer=None, views=None) -> TrainBatches:
  """Shuffled, endlessly repeated local batches of dict(image, label[, text]).

  Sources of encoded images (input_pipeline/encoded.py) give dict(views[, small_views],
  label[, text]) instead: `views` = (large, small) decode.ViewSpec lists, each view its own
  random-resized crop at full resolution. Crops and, with a `tokenizer`, the caption an
  image-text example gets as "text" are drawn from RNGs seeded by (seed, stream position),
  so resuming is exact.
  """
  # repeat() after shuffle() reshuffles every epoch with a seed derived from
  # (seed, epoch).
  if hasattr(source, "train_views"):
    if views is None:
      raise ValueError("A source of encoded images needs the method's views "
                       "(Method.view_specs()) to crop them on the host.")
    epochs = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat().random_map(
        functools.partial(source.train_views, views), seed=seed + 2)
  else:
    epochs = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  if tokenizer is not None:
    epochs = epochs.random_map(functools.partial(with_text, tokenizer), seed=seed + 1)
  return TrainBatches(
      _process_batches(epochs, global_batch_size, process_index, process_count),
      num_workers)


def _masked_example(source: Source, padding: dict[str, np.ndarray],
                    index: int) -> dict[str, Any]:
  if index < len(source):
    return {**source[index], "mask": np.True_}
  return {**padding, "mask": np.False_}


def eval_batches(source: Source, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, tokenizer=None) -> Iterator[Batch]:
  """One pass in order: local batches of dict(image, label, mask[, text]).

  The pass is padded to a multiple of `global_batch_size` so that every
  process runs the same number of equally shaped steps; padding rows are
  zeros with mask=False. With a `tokenizer`, image-text examples get "text":
  the tokens of their first caption.
  """
  if tokenizer is not None:
    source = grain.MapDataset.source(source).map(functools.partial(with_text, tokenizer))
  num_batches = -(-len(source) // global_batch_size)
  padding = {k: np.zeros_like(v) for k, v in source[0].items()}
  examples = grain.MapDataset.range(num_batches * global_batch_size).map(
      functools.partial(_masked_example, source, padding))
  return iter(_process_batches(examples, global_batch_size, process_index,
                               process_count).to_iter_dataset(_READ_OPTIONS))
