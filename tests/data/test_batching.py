"""Token layout, masks, corrected segments, truncation and device splitting, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from raw_files import GOOD_ROWS, image_bytes
from rlhfv_jax import segments
from rlhfv_jax.batch import PreferenceBatch, SFTBatch
from rlhfv_jax.data.packing import (Answer, TokenizedExample, assemble_batch, choose_bucket,
                                    pack_sequence, pack_shared_prefix,
                                    shared_prefix_budgets, tokenize_record)
from rlhfv_jax.data.records import make_preference_record, make_sft_record
from rlhfv_jax.data.tokenizer import ChatTemplate

I = 32000  # image token id
PROMPT = np.array([1, 10, 11, I, I, 12], np.int32)
ANSWER = Answer(np.array([20, 21, 22], np.int32), np.array([False, True, False]))
T, F = True, False


def test_pack_sequence_by_hand():
  row = pack_sequence(PROMPT, ANSWER, 12, eos_id=2, pad_id=0)
  np.testing.assert_array_equal(row["input_ids"], [1, 10, 11, I, I, 12, 20, 21, 22, 2, 0, 0])
  np.testing.assert_array_equal(row["targets"], [10, 11, I, I, 12, 20, 21, 22, 2, 0, 0, 0])
  np.testing.assert_array_equal(row["attention_mask"], [T] * 10 + [F] * 2)
  np.testing.assert_array_equal(row["loss_mask"], [F] * 5 + [T] * 4 + [F] * 3)
  np.testing.assert_array_equal(row["corrected_mask"], [F] * 6 + [T] + [F] * 5)


def test_truncation_cuts_the_answer_end_and_drops_eos():
  row = pack_sequence(PROMPT, ANSWER, 8, eos_id=2, pad_id=0)
  np.testing.assert_array_equal(row["input_ids"], [1, 10, 11, I, I, 12, 20, 21])
  np.testing.assert_array_equal(row["targets"], [10, 11, I, I, 12, 20, 21, 0])
  np.testing.assert_array_equal(row["loss_mask"], [F] * 5 + [T, T, F])
  np.testing.assert_array_equal(row["corrected_mask"], [F] * 6 + [T, F])
  # Exactly answer + EOS fits: nothing is cut.
  row = pack_sequence(PROMPT, ANSWER, 10, eos_id=2, pad_id=0)
  assert row["input_ids"][-1] == 2 and row["loss_mask"].sum() == 4
  # The prompt plus one answer token is the minimum; less is an error, never a prompt cut.
  assert pack_sequence(PROMPT, ANSWER, 7, eos_id=2, pad_id=0)["loss_mask"].sum() == 1
  with pytest.raises(ValueError, match="prompt of 6 tokens"):
    pack_sequence(PROMPT, ANSWER, 6, eos_id=2, pad_id=0)


REJECTED = Answer(np.array([30, 31], np.int32), np.array([True, False]))


def test_pack_shared_prefix_by_hand():
  row = pack_shared_prefix(PROMPT, ANSWER, REJECTED, 16, eos_id=2, pad_id=0)
  c, r = row["chosen"], row["rejected"]
  #        slot:                 0  1   2   3  4  5   6   7   8  9  10  11 12 13 14 15
  np.testing.assert_array_equal(c["input_ids"], [1, 10, 11, I, I, 12, 20, 21, 22, 2, 30, 31, 2, 0, 0, 0])
  np.testing.assert_array_equal(r["input_ids"], c["input_ids"])
  np.testing.assert_array_equal(c["attention_mask"], [T] * 10 + [F] * 6)
  np.testing.assert_array_equal(r["attention_mask"], [T] * 6 + [F] * 4 + [T] * 3 + [F] * 3)
  # The prompt's last slot predicts each answer's first token in that answer's targets.
  np.testing.assert_array_equal(c["targets"], [10, 11, I, I, 12, 20, 21, 22, 2] + [0] * 7)
  np.testing.assert_array_equal(r["targets"], [10, 11, I, I, 12, 30, 0, 0, 0, 0, 31, 2] + [0] * 4)
  np.testing.assert_array_equal(c["loss_mask"], [F] * 5 + [T] * 4 + [F] * 7)
  np.testing.assert_array_equal(r["loss_mask"], [F] * 5 + [T] + [F] * 4 + [T, T] + [F] * 4)
  np.testing.assert_array_equal(c["corrected_mask"], [F] * 6 + [T] + [F] * 9)
  np.testing.assert_array_equal(r["corrected_mask"], [F] * 5 + [T] + [F] * 10)
  # Each answer's own sequence is exactly its unshared row, so the reference cache and
  # its fingerprints serve both layouts.
  for fields, answer in ((c, ANSWER), (r, REJECTED)):
    alone = pack_sequence(PROMPT, answer, 10, eos_id=2, pad_id=0)
    np.testing.assert_array_equal(fields["input_ids"][fields["attention_mask"]],
                                  alone["input_ids"][alone["attention_mask"]])
    np.testing.assert_array_equal(fields["targets"][fields["loss_mask"]],
                                  alone["targets"][alone["loss_mask"]])


def test_shared_prefix_budgets_cut_the_longer_answer_first():
  assert shared_prefix_budgets(6, (3, 2), 16) == (4, 3)   # both fit with their EOS
  assert shared_prefix_budgets(6, (3, 2), 13) == (4, 3)   # exactly
  assert shared_prefix_budgets(6, (9, 2), 13) == (4, 3)   # the longer is cut
  assert shared_prefix_budgets(6, (2, 9), 13) == (3, 4)
  assert shared_prefix_budgets(6, (9, 8), 13) == (4, 3)   # both long: half each
  assert shared_prefix_budgets(6, (9, 9), 8) == (1, 1)
  with pytest.raises(ValueError, match="no room for two answers"):
    shared_prefix_budgets(6, (3, 2), 7)
  row = pack_shared_prefix(PROMPT, ANSWER, REJECTED, 12, eos_id=2, pad_id=0)
  # Chosen (4 with EOS) is the longer: cut to 3 tokens, EOS dropped; rejected stays whole.
  np.testing.assert_array_equal(row["chosen"]["input_ids"],
                                [1, 10, 11, I, I, 12, 20, 21, 22, 30, 31, 2])
  np.testing.assert_array_equal(row["chosen"]["loss_mask"], [F] * 5 + [T] * 3 + [F] * 4)
  np.testing.assert_array_equal(row["rejected"]["loss_mask"], [F] * 5 + [T] + [F] * 3 + [T, T, F])


def test_assemble_batch_shared_prefix_lengths_and_sft_unaffected():
  example = TokenizedExample(id="x", index=0, epoch=0, image=b"", prompt_ids=PROMPT,
                             answers={"chosen": ANSWER, "rejected": REJECTED})
  assert example.required_length() == 10 and example.required_length(True) == 13
  batch = assemble_batch([example], np.zeros((1, 2, 2, 3), np.float32), 13, eos_id=2, pad_id=0,
                         shared_prefix=True)
  assert batch.shared_prefix and batch.chosen.input_ids.shape == (1, 13)
  sft = TokenizedExample(id="s", index=0, epoch=0, image=b"", prompt_ids=PROMPT,
                         answers={"tokens": ANSWER})
  assert sft.required_length(True) == sft.required_length() == 10
  batch = assemble_batch([sft], np.zeros((1, 2, 2, 3), np.float32), 10, eos_id=2, pad_id=0,
                         shared_prefix=True)
  assert isinstance(batch, SFTBatch)


def test_choose_bucket():
  assert choose_bucket(10, (16, 32, 64)) == 16
  assert choose_bucket(16, (16, 32, 64)) == 16
  assert choose_bucket(17, (16, 32, 64)) == 32
  assert choose_bucket(100, (16, 32, 64)) == 64  # truncated to the largest


def _preference_records(n=3):
  return [make_preference_record(dict(GOOD_ROWS[i % 3], id=f"r{i}", image=image_bytes(i)))
          for i in range(n)]


@pytest.mark.parametrize("mode", ["paper", "rlhfv"])
def test_corrected_masks_agree_with_segments_on_the_answer_ids(tokenizer, mode):
  template = ChatTemplate(tokenizer, num_image_tokens=4)
  records = _preference_records()
  examples = [tokenize_record(r, template, segment_mode=mode) for r in records]
  length = 128
  batch = assemble_batch(examples, np.zeros((3, 8, 8, 3), np.float32), length,
                         eos_id=2, pad_id=0)
  assert isinstance(batch, PreferenceBatch)
  for b, record in enumerate(records):
    chosen_ids = tokenizer.encode(record.chosen)
    rejected_ids = tokenizer.encode(record.rejected)
    rej_mask, cho_mask = segments.correction_masks(rejected_ids, chosen_ids, mode=mode)
    for seq, ids, mask in ((batch.chosen, chosen_ids, cho_mask),
                           (batch.rejected, rejected_ids, rej_mask)):
      prompt = template.encode_prompt(record.question)
      assert seq.input_ids[b, :len(prompt)].tolist() == prompt
      assert seq.targets[b][seq.loss_mask[b]].tolist() == ids + [2]
      assert seq.corrected_mask[b][seq.loss_mask[b]].tolist() == mask.tolist() + [False]
      # The first scored position is the last prompt token predicting y_0.
      assert np.argmax(seq.loss_mask[b]) == len(prompt) - 1
      assert seq.input_ids[b].tolist().count(I) == 4
      assert not (seq.corrected_mask[b] & ~seq.loss_mask[b]).any()
      assert seq.attention_mask[b].sum() == len(prompt) + len(ids) + 1


def test_replacement_example_marks_the_replaced_words(tokenizer):
  # "There is a blue mug ..." vs "There is a red cup ...": paper mode marks the swap.
  example = tokenize_record(_preference_records(1)[0], ChatTemplate(tokenizer, 1))
  chosen, rejected = example.answers["chosen"], example.answers["rejected"]
  assert tokenizer.decode(chosen.ids[chosen.corrected]) == "blue mug"
  assert tokenizer.decode(rejected.ids[rejected.corrected]) == "red cup"


def test_explicit_spans_override_the_diff(tokenizer):
  fields = dict(GOOD_ROWS[0], id="s", image=image_bytes(0))
  # Annotate only "wooden" in the chosen answer, nothing in the rejected one.
  start = fields["chosen"].index("wooden")
  record = make_preference_record(dict(fields, segments={"chosen": [[start, start + 6]]}))
  example = tokenize_record(record, ChatTemplate(tokenizer, 1))
  chosen, rejected = example.answers["chosen"], example.answers["rejected"]
  assert tokenizer.decode(chosen.ids[chosen.corrected]) == "wooden"
  assert not rejected.corrected.any()
  assert chosen.ids.tolist() == tokenizer.encode(record.chosen)


def test_sft_batch_has_no_corrected_tokens(tokenizer):
  template = ChatTemplate(tokenizer, 2)
  record = make_sft_record(dict(id="q", image=image_bytes(0), question="Color?", answer="red"))
  batch = assemble_batch([tokenize_record(record, template)], np.zeros((1, 8, 8, 3), np.float32),
                         64, eos_id=2, pad_id=0)
  assert isinstance(batch, SFTBatch)
  assert batch.tokens.targets[0][batch.tokens.loss_mask[0]].tolist() == (
      tokenizer.encode("red") + [2])
  assert not batch.tokens.corrected_mask.any()


def test_reference_logps_land_on_the_scored_positions(tokenizer):
  template = ChatTemplate(tokenizer, 1)
  examples = [tokenize_record(r, template) for r in _preference_records(2)]
  sequences = {}
  def lookup(example_id, name, n, sequence_ids):
    sequences[example_id, name] = sequence_ids
    return np.arange(n, dtype=np.float32) + (100 if name == "chosen" else 200) + int(example_id[1:])
  batch = assemble_batch(examples, np.zeros((2, 8, 8, 3), np.float32), 96, eos_id=2, pad_id=0,
                         ref_lookup=lookup)
  for b in range(2):
    for name, seq, offset in (("chosen", batch.chosen, 100), ("rejected", batch.rejected, 200)):
      n = seq.loss_mask[b].sum()
      np.testing.assert_array_equal(seq.ref_token_logps[b][seq.loss_mask[b]],
                                    np.arange(n) + offset + b)
      assert (seq.ref_token_logps[b][~seq.loss_mask[b]] == 0).all()
      # The lookup sees the row's real tokens: prompt, answer, EOS.
      answer = examples[b].answers[name].ids.tolist()
      assert sequences[f"r{b}", name].tolist() == (
          examples[b].prompt_ids.tolist() + answer + [2])
