"""Records -> `PreferenceBatch` / `SFTBatch`: tokenization, masks, buckets, the grain loader.

Per example (`tokenize_record`):
  prompt ids = the chat template with image ids spliced (see `tokenizer`), and for each
  answer its response ids y and a corrected flag per token: from the record's explicit
  character spans if it has them, else from `segments.correction_masks(rejected, chosen,
  mode, min_match)` (all False for SFT answers).

Per sequence (`pack_sequence`), in the layout of `rlhfv_jax.batch`:
  ids = prompt + y + [EOS], right-padded to the bucket length T; targets = ids shifted
  left; loss_mask covers y and the EOS; corrected_mask ⊆ loss_mask (the EOS is never
  corrected). Truncation only ever cuts the answer, from its end: if prompt + y + EOS
  exceeds the largest bucket, y is cut to fit and the EOS is dropped (a cut answer must
  not teach the model to stop there); the `Loader` logs each cut example once and counts
  them (`Loader.truncated_ids`). A prompt that leaves no room for a single answer
  token is an error, or is skipped and listed under the "skip" error policy; image
  tokens and the prompt are never cut.

Shared prompt prefix (`shared_prefix=True`, ``config.data.shared_prefix``, the default in
training): a preference pair becomes ONE row ``[prompt | y_w + EOS | y_l + EOS | pad]``
(`pack_shared_prefix`, layout in `rlhfv_jax.batch`), so buckets then hold packed rows.
If both answers do not fit the largest bucket, the longer one is cut first: the shorter
keeps all of itself if that leaves the longer at least as much room, else each gets half
(`shared_prefix_budgets`); a cut answer loses its EOS, as above. Each answer's sequence
(`input_ids[attention_mask]`) is then exactly the unshared row of the same length, so
the reference cache serves both layouts.

Buckets: a global batch uses the smallest configured length that holds its longest
example (the largest one if none does), so the train step compiles once per bucket.
Unshared chosen and rejected rows are padded to the same length (the loss concatenates
them).

Loader (`Loader`, grain): source indices are shuffled per epoch from `seed` (grain's
index shuffle, a new permutation each epoch), repeated for `num_epochs` (None =
forever), tokenized in a thread pool, filtered (prompt too long), grouped into *global*
batches (epochs run on into each other, so a finite run has at most one partial batch, at
its very end: batches have a fixed size, so its < B examples are not served but logged by
id and listed in `Loader.dropped_ids`), and each process keeps the contiguous slice
``[process_index * B/P, (process_index + 1) * B/P)`` of every global batch. Every process
tokenizes the whole global batch (cheap text work) so all of them pick the same bucket,
and decodes only its own images. So the concatenated host batches of a P-process run
equal, example for example and in order, the batch of a single-process run with the same
global batch size. Augmentation draws from (seed, epoch, source index), so it does not
depend on the process layout either. The iterator is a grain `DatasetIterator`:
`get_state()` / `set_state()` give a small dict to checkpoint and exact resumption.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import logging
import threading
import weakref
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import grain
import numpy as np

from rlhfv_jax import segments
from rlhfv_jax.batch import PreferenceBatch, SFTBatch, TokenSequences
from rlhfv_jax.data.fixed_batches import FixedSizeBatch, fixed_size_batches
from rlhfv_jax.data.images import ImagePreprocessor, augmentation_rng
from rlhfv_jax.data.records import ErrorLog, PreferenceRecord, Record, RecordError, SFTRecord
from rlhfv_jax.data.tokenizer import ChatTemplate

Batch = Union[PreferenceBatch, SFTBatch]


@dataclasses.dataclass(frozen=True)
class Answer:
  """One response: its token ids y (no EOS) and which of them are corrected."""

  ids: np.ndarray        # [n] int32
  corrected: np.ndarray  # [n] bool


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
  """A record after tokenization; the image stays encoded until its host decodes it."""

  id: str
  index: int   # position in the source split
  epoch: int
  image: bytes
  prompt_ids: np.ndarray  # [P] int32, BOS and image ids included
  answers: dict[str, Answer]  # "chosen"/"rejected" or "tokens"

  def required_length(self, shared_prefix: bool = False) -> int:
    """Row length that holds the example untruncated: the prompt and the longest answer
    with its EOS, or with `shared_prefix` the prompt and every answer with its EOS."""
    answer_lengths = [len(a.ids) + 1 for a in self.answers.values()]
    return len(self.prompt_ids) + (sum if shared_prefix else max)(answer_lengths)


def spans_to_token_mask(offsets: Sequence[tuple[int, int]],
                        spans: Sequence[tuple[int, int]]) -> np.ndarray:
  """True for each token whose character range [start, end) overlaps a span."""
  mask = np.zeros(len(offsets), dtype=bool)
  for k, (start, end) in enumerate(offsets):
    mask[k] = any(start < span_end and span_start < end for span_start, span_end in spans)
  return mask


def tokenize_record(record: Record, template: ChatTemplate, *, segment_mode: str = "paper",
                    min_match: int = 3, index: int = 0, epoch: int = 0) -> TokenizedExample:
  """Tokenizes a record and computes the corrected flags of its answers (module docstring)."""
  prompt_ids = np.asarray(template.encode_prompt(record.question), np.int32)
  if isinstance(record, PreferenceRecord):
    if record.has_spans:
      tok = template.tokenizer
      chosen_ids, chosen_offsets = tok.encode_with_offsets(record.chosen)
      rejected_ids, rejected_offsets = tok.encode_with_offsets(record.rejected)
      chosen_corrected = spans_to_token_mask(chosen_offsets, record.chosen_spans)
      rejected_corrected = spans_to_token_mask(rejected_offsets, record.rejected_spans)
    else:
      chosen_ids = template.encode_answer(record.chosen)
      rejected_ids = template.encode_answer(record.rejected)
      rejected_corrected, chosen_corrected = segments.correction_masks(
          rejected_ids, chosen_ids, mode=segment_mode, min_match=min_match)
    answers = {"chosen": Answer(np.asarray(chosen_ids, np.int32), chosen_corrected),
               "rejected": Answer(np.asarray(rejected_ids, np.int32), rejected_corrected)}
  elif isinstance(record, SFTRecord):
    ids = np.asarray(template.encode_answer(record.answer), np.int32)
    answers = {"tokens": Answer(ids, np.zeros(len(ids), bool))}
  else:
    raise TypeError(f"record {getattr(record, 'id', '?')!r}: unsupported type {type(record)}")
  return TokenizedExample(id=record.id, index=index, epoch=epoch, image=record.image,
                          prompt_ids=prompt_ids, answers=answers)


def prompt_fits(example: TokenizedExample, max_length: int, errors: ErrorLog,
                shared_prefix: bool = False) -> bool:
  """Whether the prompt leaves room for one token of each answer in a row (one answer per
  row unless `shared_prefix`); if not, `errors` raises or skips."""
  room = len(example.answers) if shared_prefix else 1
  if len(example.prompt_ids) + room <= max_length:
    return True
  answers = "both answers" if room > 1 else "the answer"
  errors.handle(RecordError(
      example.id, f"prompt of {len(example.prompt_ids)} tokens (image tokens included) leaves "
      f"no room for {answers} in the largest bucket ({max_length}); prompts are never "
      "truncated", f"index {example.index}"))
  return False


def answer_positions(prompt_length: int, answer_length: int, length: int) -> slice:
  """Target positions scored for an answer of `answer_length` ids (+EOS) after truncation."""
  scored = min(answer_length + 1, length - prompt_length)
  return slice(prompt_length - 1, prompt_length - 1 + scored)


def pack_sequence(prompt_ids: np.ndarray, answer: Answer, length: int, *, eos_id: int,
                  pad_id: int) -> dict[str, np.ndarray]:
  """One row of a `TokenSequences` (see the module docstring for truncation).

  Returns:
    dict of [length] arrays: input_ids, attention_mask, targets, loss_mask, corrected_mask.
  """
  prompt_length = len(prompt_ids)
  if prompt_length + 1 > length:
    raise ValueError(f"prompt of {prompt_length} tokens does not fit length {length}")
  room = length - prompt_length
  if len(answer.ids) + 1 <= room:
    response = np.concatenate([answer.ids, [eos_id]])
    corrected = np.concatenate([answer.corrected, [False]])
  else:  # truncated: keep what fits, drop the EOS
    response, corrected = answer.ids[:room], answer.corrected[:room]
  ids = np.concatenate([prompt_ids, response]).astype(np.int32)
  n = len(ids)
  input_ids = np.full(length, pad_id, np.int32)
  input_ids[:n] = ids
  targets = np.full(length, pad_id, np.int32)
  targets[:n - 1] = ids[1:]
  scored = answer_positions(prompt_length, len(answer.ids), length)
  loss_mask = np.zeros(length, bool)
  loss_mask[scored] = True
  corrected_mask = np.zeros(length, bool)
  corrected_mask[scored] = corrected
  return dict(input_ids=input_ids, attention_mask=np.arange(length) < n, targets=targets,
              loss_mask=loss_mask, corrected_mask=corrected_mask)


def shared_prefix_budgets(prompt_length: int, answer_lengths: Sequence[int],
                          length: int) -> tuple[int, ...]:
  """Tokens each answer keeps (ids + EOS when whole) in a shared-prefix row of `length`.

  All of them if they fit; else the longer is cut first: the shorter answer stays whole
  if the longer still gets at least as much room, otherwise the room is split in half.

  Args:
    prompt_length: the prompt's tokens.
    answer_lengths: each answer's ids, without EOS.
    length: the row length.
  """
  room = length - prompt_length
  needed = [n + 1 for n in answer_lengths]
  if len(needed) != 2:
    raise ValueError(f"a shared-prefix row holds 2 answers, not {len(needed)}")
  if room < 2:
    raise ValueError(f"prompt of {prompt_length} tokens leaves no room for two answers in "
                     f"length {length}")
  if sum(needed) <= room:
    return tuple(needed)
  short = int(np.argmin(needed))
  budgets = [0, 0]
  if 2 * needed[short] <= room:
    budgets[short], budgets[1 - short] = needed[short], room - needed[short]
  else:
    budgets[short], budgets[1 - short] = room // 2, room - room // 2
  return tuple(budgets)


def pack_shared_prefix(prompt_ids: np.ndarray, chosen: Answer, rejected: Answer, length: int,
                       *, eos_id: int, pad_id: int) -> dict[str, dict[str, np.ndarray]]:
  """One shared-prefix row ``[prompt | chosen | rejected | pad]`` (`rlhfv_jax.batch`).

  Each answer is packed as its own unshared row cut to its budget (`pack_sequence`,
  `shared_prefix_budgets`), then spliced after the one copy of the prompt.

  Returns:
    {"chosen": fields, "rejected": fields}, each a `pack_sequence`-style dict of [length]
    arrays aligned to the packed row (`input_ids` equal in both).
  """
  prompt_length = len(prompt_ids)
  c_len, r_len = shared_prefix_budgets(prompt_length, (len(chosen.ids), len(rejected.ids)),
                                       length)
  # Unpadded rows: each holds exactly the prompt and the answer's budget.
  c, r = (pack_sequence(prompt_ids, answer, prompt_length + budget, eos_id=eos_id,
                        pad_id=pad_id) for answer, budget in ((chosen, c_len), (rejected, r_len)))
  pad = length - prompt_length - c_len - r_len
  blank = lambda n, k: np.full(n, pad_id if k in ("input_ids", "targets") else False,
                               c[k].dtype)
  # Slots: [prompt | chosen | rejected | pad]. Each answer's fields keep the prompt's
  # slots (its last one predicts the answer's first token) and its own, blank elsewhere;
  # both hold the whole row's input_ids.
  input_ids = np.concatenate([c["input_ids"], r["input_ids"][prompt_length:],
                              blank(pad, "input_ids")])
  packed = {"chosen": {k: np.concatenate([v, blank(r_len + pad, k)]) for k, v in c.items()},
            "rejected": {k: np.concatenate([v[:prompt_length], blank(c_len, k),
                                            v[prompt_length:], blank(pad, k)])
                         for k, v in r.items()}}
  for fields in packed.values():
    fields["input_ids"] = input_ids
  return packed


def choose_bucket(required_length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= `required_length`, else the largest (answers get truncated)."""
  fitting = [b for b in buckets if b >= required_length]
  return min(fitting) if fitting else max(buckets)


# (example id, answer name, n scored, real token ids of the packed row) -> [n] log-probs
RefLookup = Callable[[str, str, int, np.ndarray], np.ndarray]


def assemble_batch(examples: Sequence[TokenizedExample], pixel_values: np.ndarray, length: int,
                   *, eos_id: int, pad_id: int, ref_lookup: Optional[RefLookup] = None,
                   shared_prefix: bool = False) -> Batch:
  """Packs tokenized examples into a `PreferenceBatch` or `SFTBatch` of sequence `length`.

  Args:
    examples: the host's examples, all of one kind.
    pixel_values: [B, H, W, 3] float32, image b belongs to examples[b].
    length: the bucket length T.
    eos_id, pad_id: special token ids.
    ref_lookup: if given, fills `ref_token_logps` from the reference cache.
    shared_prefix: pack each preference pair into one row (module docstring); SFT
      examples have one answer and are unaffected.
  """
  names = list(examples[0].answers)
  shared_prefix = shared_prefix and names == ["chosen", "rejected"]
  if shared_prefix:
    packed = [pack_shared_prefix(e.prompt_ids, e.answers["chosen"], e.answers["rejected"],
                                 length, eos_id=eos_id, pad_id=pad_id) for e in examples]
  sequences = {}
  for name in names:
    if shared_prefix:
      rows = [p[name] for p in packed]
    else:
      rows = [pack_sequence(e.prompt_ids, e.answers[name], length, eos_id=eos_id,
                            pad_id=pad_id) for e in examples]
    fields = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    if ref_lookup is not None:
      # The cache holds each answer's scored tokens in order: they go back to the
      # `loss_mask` slots, whichever layout the row has.
      ref = np.zeros((len(examples), length), np.float32)
      for b, e in enumerate(examples):
        scored = fields["loss_mask"][b]
        ref[b, scored] = ref_lookup(e.id, name, int(scored.sum()),
                                    fields["input_ids"][b][fields["attention_mask"][b]])
      fields["ref_token_logps"] = ref
    sequences[name] = TokenSequences(**fields)
  if names == ["tokens"]:
    return SFTBatch(pixel_values=pixel_values, tokens=sequences["tokens"])
  return PreferenceBatch(pixel_values=pixel_values, chosen=sequences["chosen"],
                         rejected=sequences["rejected"], shared_prefix=shared_prefix)


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
  augmented. Prompts that do not fit the largest bucket go through `errors`.

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
  for chunk in fixed_size_batches(examples, batch_size, num_batches=num_batches,
                                  filler=filler):
    length = choose_bucket(max(e.required_length(shared_prefix) for e in chunk.items), buckets)
    pixel_values = np.stack([preprocessor(e.image) for e in chunk.items])
    yield assemble_batch(chunk.items, pixel_values, length, eos_id=tok.eos_id,
                         pad_id=tok.pad_id, ref_lookup=ref_lookup,
                         shared_prefix=shared_prefix), chunk


_TRUNCATION_IDS_LOGGED = 16  # truncated ids named one by one in the log


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
    self.segment_mode = segment_mode
    self.min_match = min_match
    self.errors = errors if errors is not None else ErrorLog("raise")
    self.ref_lookup = ref_lookup
    self.num_threads = num_threads
    self.prefetch_batches = prefetch_batches
    self.shared_prefix = shared_prefix
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=num_threads)
    self._truncated: set[str] = set()
    self._dropped: dict[str, None] = {}  # ordered set: a second iterator adds nothing
    self._lock = threading.Lock()
    self._iterators: "weakref.WeakSet[LoaderIterator]" = weakref.WeakSet()

  @property
  def truncated_ids(self) -> frozenset[str]:
    """Ids of this process's examples whose answers were cut to the largest bucket so far."""
    with self._lock:
      return frozenset(self._truncated)

  def _note_truncated(self, examples: Sequence[TokenizedExample], length: int) -> None:
    cut = [e.id for e in examples if e.required_length(self.shared_prefix) > length]
    if not cut:
      return
    with self._lock:
      new = [i for i in cut if i not in self._truncated]
      self._truncated.update(new)
      total = len(self._truncated)
    if not new:
      return
    # Every id is kept in `truncated_ids`; the log names the first ones, then only
    # reports the count at powers of two so a dataset of long answers cannot flood it.
    if total - len(new) < _TRUNCATION_IDS_LOGGED:
      logging.warning("answers cut to the largest bucket (%d tokens, EOS dropped) for %s; "
                      "%d examples truncated so far", length, new, total)
    elif total.bit_length() > (total - len(new)).bit_length():
      logging.warning("%d examples truncated to the largest bucket (%d tokens) so far; "
                      "all ids in Loader.truncated_ids", total, length)

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
    """Stops the background prefetching of every iterator made so far and the decode pool.

    Also done for any iterator still open at interpreter exit (`_close_open_iterators`):
    left to garbage collection after its modules are torn down, grain's prefetch thread
    fails noisily."""
    for iterator in list(self._iterators):
      iterator.close()
    self._iterators.clear()
    self._pool.shutdown(wait=False, cancel_futures=True)


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
