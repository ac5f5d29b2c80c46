"""The grain `Loader` (training batches) and `ordered_batches` (forward-only passes).

Loader (`Loader`, grain): source indices are shuffled per epoch from `seed` (grain's
index shuffle, a new permutation each epoch), repeated for `num_epochs` (None =
forever), tokenized in a thread pool, filtered (prompt too long), grouped into *global*
batches (epochs run on into each other, so a finite run has at most one partial batch, at
its very end: batches have a fixed size, so its < B examples are not served but logged by
id and listed in `Loader.dropped_ids`), and each process keeps the contiguous slice
``[process_index * B/P, (process_index + 1) * B/P)`` of every global batch. Every process
tokenizes the whole global batch (cheap text work) so all of them pick the same bucket
(`packing.choose_bucket`), and decodes only its own images. So the concatenated host
batches of a P-process run equal, example for example and in order, the batch of a
single-process run with the same global batch size. Augmentation draws from (seed,
epoch, source index), so it does not depend on the process layout either. The iterator
is a grain `DatasetIterator`: `get_state()` / `set_state()` give a small dict to
checkpoint and exact resumption.

Answers cut to the largest bucket (`packing`) are the documented effect of the bucket
lengths, not a fault: the `Loader` counts the cut examples and keeps their ids
(`Loader.truncated_ids`), and `Loader.close` logs one INFO line with their count and
share (`Loader.truncation_summary`) and all their ids at DEBUG.

`ordered_batches` serves every example once, in order, in fixed-size batches with a
validity mask for the tail (`fixed_batches`): the reference log-prob cache and evaluation.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import threading
import weakref
from typing import Any, Iterator, Optional, Sequence

import grain
import numpy as np

from rlhfv_jax.data.fixed_batches import FixedSizeBatch, fixed_size_batches
from rlhfv_jax.data.images import ImagePreprocessor, augmentation_rng
from rlhfv_jax.data.packing import (Batch, RefLookup, TokenizedExample, assemble_batch,
                                    choose_bucket, prompt_fits, tokenize_record)
from rlhfv_jax.data.records import ErrorLog, Record
from rlhfv_jax.data.tokenizer import ChatTemplate


_TRUNCATED_IDS_NAMED = 5  # ids the truncation summary names; DEBUG lists them all


class TruncationCount:
  """Examples packed and those whose answers the bucket length cut (thread-safe).

  Cutting an answer to the largest bucket is the documented effect of the bucket lengths,
  not a fault: it is counted here and summarized once, at INFO (`log_once`), with every
  cut id at DEBUG, so nothing is cut silently and nothing floods the log.

  Args:
    largest_bucket: the length answers are cut to.
    shared_prefix: whether rows hold both answers (`TokenizedExample.required_length`).
    where: appended to the count, e.g. " on process 1 of 2".
    kept: where the ids stay, named in the summary.
  """

  def __init__(self, largest_bucket: int, shared_prefix: bool, *, where: str = "",
               kept: str = "at DEBUG"):
    self.largest_bucket, self.shared_prefix = largest_bucket, shared_prefix
    self._where, self._kept = where, kept
    self._ids: dict[str, None] = {}  # ordered set: first cut, first named
    self._packed = self._cut = 0  # repeats across epochs included
    self._logged = False
    self._lock = threading.Lock()

  @property
  def ids(self) -> frozenset[str]:
    """Ids of the examples whose answers were cut so far."""
    with self._lock:
      return frozenset(self._ids)

  def note(self, examples: Sequence[TokenizedExample], length: int) -> None:
    """Counts examples packed at `length` and those whose answers it cuts."""
    cut = [e.id for e in examples if e.required_length(self.shared_prefix) > length]
    with self._lock:
      self._packed += len(examples)
      self._cut += len(cut)
      self._ids.update(dict.fromkeys(cut))

  def summary(self) -> Optional[str]:
    """One line on the answers cut so far (count, share, the first ids); None if none."""
    with self._lock:
      ids, packed, cut = list(self._ids), self._packed, self._cut
    if not cut:
      return None
    named = ", ".join(ids[:_TRUNCATED_IDS_NAMED]) + (
        ", ..." if len(ids) > _TRUNCATED_IDS_NAMED else "")
    return (f"answers cut to the largest bucket ({self.largest_bucket} tokens, EOS dropped) "
            f"for {cut} of {packed} examples packed{self._where} ({cut / packed:.1%}): "
            f"{len(ids)} distinct ids ({named}), all {self._kept}")

  def log_once(self) -> None:
    """Logs `summary` at INFO and every cut id at DEBUG, the first time it is called."""
    with self._lock:
      if self._logged:
        return
      self._logged = True
    summary = self.summary()
    if summary is not None:
      logging.info("%s", summary)
      logging.debug("ids of the examples whose answers were cut to the largest bucket: %s",
                    sorted(self.ids))


def ordered_batches(source: Sequence[Record], template: ChatTemplate,
                    preprocessor: ImagePreprocessor, *, indices: Sequence[int],
                    batch_size: int, buckets: Sequence[int], segment_mode: str = "paper",
                    min_match: int = 3, errors: Optional[ErrorLog] = None,
                    ref_lookup: Optional[RefLookup] = None,
                    num_batches: Optional[int] = None, shared_prefix: bool = False
                    ) -> Iterator[tuple[Batch, FixedSizeBatch[TokenizedExample]]]:
  """`source[i]` for i in `indices`, in order, as batches of exactly `batch_size`.

  What forward-only passes (the reference log-prob cache, evaluation) iterate instead of
  the shuffling, repeating `Loader`: nothing is dropped; the padded tail of the last
  batch is marked invalid (`FixedSizeBatch.valid`, see `fixed_batches`). Images are not
  augmented. Prompts that do not fit the largest bucket go through `errors`; answers cut
  to it are summarized once when the iteration ends (`TruncationCount`).

  Args:
    source: random-access records.
    template, preprocessor: as for the training loader.
    indices: the records to serve (e.g. this process's share).
    batch_size: examples per batch.
    buckets: allowed sequence lengths (each batch takes the smallest that fits).
    segment_mode, min_match: `segments.correction_masks` settings.
    errors: error policy (default: raise).
    ref_lookup: fills `ref_token_logps` from a reference cache.
    num_batches: run exactly this many batches (all-invalid ones at the end), so that
      processes with fewer records keep step with the others.
    shared_prefix: one row per preference pair (module docstring).

  Yields:
    (batch, its items with the validity mask).
  """
  errors = errors if errors is not None else ErrorLog("raise")
  buckets = sorted(buckets)
  tok = template.tokenizer
  tokenize = lambda i: tokenize_record(source[i], template, segment_mode=segment_mode,
                                       min_match=min_match, index=i)
  examples = (e for e in map(tokenize, indices)
              if prompt_fits(e, buckets[-1], errors, shared_prefix))
  filler = None
  if num_batches is not None and len(source):
    filler = tokenize(0)  # for a process whose share is empty
  truncation = TruncationCount(buckets[-1], shared_prefix)
  try:
    for chunk in fixed_size_batches(examples, batch_size, num_batches=num_batches,
                                    filler=filler):
      length = choose_bucket(max(e.required_length(shared_prefix) for e in chunk.items),
                             buckets)
      truncation.note(chunk.items[:chunk.num_valid], length)
      pixel_values = np.stack([preprocessor(e.image) for e in chunk.items])
      yield assemble_batch(chunk.items, pixel_values, length, eos_id=tok.eos_id,
                           pad_id=tok.pad_id, ref_lookup=ref_lookup,
                           shared_prefix=shared_prefix), chunk
  finally:
    truncation.log_once()



class Loader:
  """Deterministic, resumable, per-process sharded batches (module docstring).

  Iterating gives a grain `DatasetIterator` of `PreferenceBatch`/`SFTBatch` (numpy
  leaves) whose `get_state()`/`set_state()` checkpoint the position exactly.
  """

  def __init__(self, source: Any, template: ChatTemplate, preprocessor: ImagePreprocessor, *,
               global_batch_size: int, buckets: Sequence[int], seed: int = 0,
               num_epochs: Optional[int] = None, shuffle: bool = True,
               process_index: int = 0, process_count: int = 1,
               segment_mode: str = "paper", min_match: int = 3,
               errors: Optional[ErrorLog] = None,
               ref_lookup: Optional[RefLookup] = None, num_threads: int = 4,
               prefetch_batches: int = 2, shared_prefix: bool = False):
    """Args:
      source: random-access records (`tfds_builders.RecordSource` or any sequence).
      template: chat template with the tokenizer and `num_image_tokens`.
      preprocessor: image processor with the augmentation policy.
      global_batch_size: examples per step over all processes.
      buckets: allowed sequence lengths.
      seed: shuffle and augmentation seed.
      num_epochs: passes over the data; None repeats forever.
      shuffle: False keeps the source order (evaluation, reference pass).
      process_index, process_count: this process and how many share the batch
        (`jax.process_index()`, `jax.process_count()` in training).
      segment_mode, min_match: `segments.correction_masks` settings.
      errors: error policy for examples whose prompt is too long (default: raise).
      ref_lookup: reference log-prob lookup (`ref_cache.ReferenceCache.lookup`) or None.
      num_threads: threads for tokenization and image decoding.
      prefetch_batches: host batches prepared ahead in a background thread (0: none).
      shared_prefix: one row per preference pair, the prompt once (module docstring).
    """
    if not buckets or any(int(b) < 2 for b in buckets):
      raise ValueError(f"buckets={tuple(buckets)}: need at least one length >= 2")
    if global_batch_size % process_count:
      raise ValueError(f"global batch size {global_batch_size} is not divisible by "
                       f"{process_count} processes")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if len(source) == 0:
      raise ValueError(f"empty data source {source!r}")
    self.source = source
    self.template = template
    self.preprocessor = preprocessor
    self.global_batch_size = global_batch_size
    self.host_batch_size = global_batch_size // process_count
    self.buckets = tuple(sorted(int(b) for b in buckets))
    self.seed = seed
    self.num_epochs = num_epochs
    self.shuffle = shuffle
    self.process_index = process_index
    self.process_count = process_count
    self.segment_mode = segment_mode
    self.min_match = min_match
    self.errors = errors if errors is not None else ErrorLog("raise")
    self.ref_lookup = ref_lookup
    self.num_threads = num_threads
    self.prefetch_batches = prefetch_batches
    self.shared_prefix = shared_prefix
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=num_threads)
    self._truncation = TruncationCount(
        self.buckets[-1], shared_prefix, kept="in Loader.truncated_ids and at DEBUG",
        where=f" on process {process_index} of {process_count}" if process_count > 1 else "")
    self._dropped: dict[str, None] = {}  # ordered set: a second iterator adds nothing
    self._lock = threading.Lock()
    self._iterators: "weakref.WeakSet[LoaderIterator]" = weakref.WeakSet()

  @property
  def truncated_ids(self) -> frozenset[str]:
    """Ids of this process's examples whose answers were cut to the largest bucket so far."""
    return self._truncation.ids

  def _note_truncated(self, examples: Sequence[TokenizedExample], length: int) -> None:
    self._truncation.note(examples, length)

  def truncation_summary(self) -> Optional[str]:
    """One line on the answers cut to the largest bucket so far; None when none was.

    Counts are this process's examples as packed, an example once per epoch; the share
    is of those. The distinct ids are `truncated_ids`.
    """
    return self._truncation.summary()

  @property
  def dropped_ids(self) -> tuple[str, ...]:
    """Ids of the examples left over at the end of a finite run, too few for a whole global
    batch, so never served (the same on every process)."""
    with self._lock:
      return tuple(self._dropped)

  def _whole_batch(self, global_examples: Sequence[TokenizedExample]) -> bool:
    """Whether a global batch is full; the partial last one is listed and logged instead."""
    if len(global_examples) == self.global_batch_size:
      return True
    ids = [e.id for e in global_examples]
    with self._lock:
      self._dropped.update(dict.fromkeys(ids))
    logging.warning("the last %d examples (%s) do not fill a global batch of %d and are not "
                    "used; see Loader.dropped_ids", len(ids), ids, self.global_batch_size)
    return False

  def _tokenize(self, position: int, index: int) -> TokenizedExample:
    epoch = position // len(self.source)
    return tokenize_record(self.source[index], self.template, segment_mode=self.segment_mode,
                           min_match=self.min_match, index=int(index), epoch=epoch)

  def _prompt_fits(self, example: TokenizedExample) -> bool:
    return prompt_fits(example, self.buckets[-1], self.errors, self.shared_prefix)

  def _image(self, example: TokenizedExample) -> np.ndarray:
    rng = augmentation_rng(self.seed, example.epoch, example.index)
    return self.preprocessor(example.image, rng)

  def host_batch(self, global_examples: Sequence[TokenizedExample]
                 ) -> tuple[list[str], Batch]:
    """(ids, batch) of this process's slice of a global batch, at the global batch's bucket."""
    length = choose_bucket(max(e.required_length(self.shared_prefix) for e in global_examples),
                           self.buckets)
    start = self.process_index * self.host_batch_size
    own = global_examples[start:start + self.host_batch_size]
    self._note_truncated(own, length)
    pixel_values = np.stack(list(self._pool.map(self._image, own)))
    tok = self.template.tokenizer
    return [e.id for e in own], assemble_batch(own, pixel_values, length, eos_id=tok.eos_id,
                                               pad_id=tok.pad_id, ref_lookup=self.ref_lookup,
                                               shared_prefix=self.shared_prefix)

  def dataset(self, with_ids: bool = False) -> grain.IterDataset:
    """The grain pipeline (module docstring); elements are batches, or (ids, batch) pairs."""
    indices = grain.MapDataset.range(len(self.source))
    if self.shuffle:
      indices = indices.shuffle(seed=self.seed)
    indices = indices.repeat(self.num_epochs)
    examples = indices.map_with_index(self._tokenize).to_iter_dataset(
        grain.ReadOptions(num_threads=self.num_threads,
                          prefetch_buffer_size=2 * self.global_batch_size))
    batches = (examples.filter(self._prompt_fits)
               .batch(self.global_batch_size, drop_remainder=False, batch_fn=list)
               .filter(self._whole_batch)
               .map(self.host_batch))
    if not with_ids:
      batches = batches.map(lambda ids_and_batch: ids_and_batch[1])
    # Images of the next batches are decoded in the background while a step runs; the
    # iterator state still counts only the batches handed out.
    return grain.experimental.ThreadPrefetchIterDataset(
        batches, prefetch_buffer_size=self.prefetch_batches)

  def __iter__(self) -> "LoaderIterator":
    iterator = LoaderIterator(iter(self.dataset()))
    self._iterators.add(iterator)
    _OPEN_ITERATORS.add(iterator)
    return iterator

  def close(self) -> None:
    """Stops the background prefetching of every iterator made so far and the decode pool,
    then logs the truncation summary (`truncation_summary`, once per loader).

    The iterators are also closed for any iterator still open at interpreter exit
    (`_close_open_iterators`): left to garbage collection after its modules are torn
    down, grain's prefetch thread fails noisily."""
    for iterator in list(self._iterators):
      iterator.close()
    self._iterators.clear()
    self._pool.shutdown(wait=False, cancel_futures=True)
    self._truncation.log_once()


class LoaderIterator:
  """A `Loader`'s grain iterator (next, get_state, set_state) that can be closed for good.

  `close` stops grain's prefetch thread and drops the grain iterator, so its finalizer
  runs now, not at interpreter teardown after the modules it needs are gone.
  """

  def __init__(self, iterator: grain.DatasetIterator):
    self._iterator: Optional[grain.DatasetIterator] = iterator

  def __iter__(self) -> "LoaderIterator":
    return self

  def _open(self) -> grain.DatasetIterator:
    if self._iterator is None:
      raise RuntimeError("the Loader iterator was closed")
    return self._iterator

  def __next__(self) -> Any:
    return next(self._open())

  def get_state(self) -> Any:
    return self._open().get_state()

  def set_state(self, state: Any) -> None:
    self._open().set_state(state)

  def close(self) -> None:
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None


# Iterators of every Loader, closed at exit while the modules they need still exist.
_OPEN_ITERATORS: "weakref.WeakSet[LoaderIterator]" = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
  for iterator in list(_OPEN_ITERATORS):
    iterator.close()
