"""Records -> `PreferenceBatch` / `SFTBatch` rows: tokenization, masks, truncation, buckets.

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
  not teach the model to stop there); the `loader.Loader` counts the cut examples and
  reports them. A prompt that leaves no room for a single answer token is an error, or
  is skipped and listed under the "skip" error policy (`prompt_fits`); image tokens and
  the prompt are never cut.

Shared prompt prefix (`shared_prefix=True`, ``config.data.shared_prefix``, the default in
training): a preference pair becomes ONE row ``[prompt | y_w + EOS | y_l + EOS | pad]``
(`pack_shared_prefix`, layout in `rlhfv_jax.batch`), so buckets then hold packed rows.
If both answers do not fit the largest bucket, the longer one is cut first: the shorter
keeps all of itself if that leaves the longer at least as much room, else each gets half
(`shared_prefix_budgets`); a cut answer loses its EOS, as above. Each answer's sequence
(`input_ids[attention_mask]`) is then exactly the unshared row of the same length, so
the reference cache serves both layouts.

Buckets (`choose_bucket`): a global batch uses the smallest configured length that holds
its longest example (the largest one if none does), so the train step compiles once per
bucket. Unshared chosen and rejected rows are padded to the same length (the loss
concatenates them). `assemble_batch` packs a batch's examples at its bucket.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Union

import numpy as np

from rlhfv_jax import segments
from rlhfv_jax.batch import PreferenceBatch, SFTBatch, TokenSequences
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
      chosen_ids, chosen_offsets = template.encode_answer_with_offsets(record.chosen)
      rejected_ids, rejected_offsets = template.encode_answer_with_offsets(record.rejected)
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
