"""Corrected-segment masks on hand-made word examples and with the real LLaVA tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece

from rlhfv_jax.segments import correction_masks


def words(text: str) -> list[str]:
  return text.split()


def marked(tokens: list[str], mask: np.ndarray) -> list[str]:
  assert len(mask) == len(tokens)
  return [t for t, m in zip(tokens, mask) if m]


REJ_REPLACE = words("there is a red cup on the wooden table next to a sleeping cat")
CHO_REPLACE = words("there is a blue mug on the wooden table next to a sleeping cat")


@pytest.mark.parametrize("mode", ["paper", "rlhfv"])
def test_replacement_is_corrected_on_both_sides(mode):
  rej, cho = correction_masks(REJ_REPLACE, CHO_REPLACE, mode=mode)
  assert marked(REJ_REPLACE, rej) == ["red", "cup"]
  assert marked(CHO_REPLACE, cho) == ["blue", "mug"]


def test_deletion_is_weighted_only_in_paper_mode():
  rejected = words("a man holds a phone and a dog sits beside him on the old bench")
  chosen = words("a man holds a phone on the old bench")
  rej, cho = correction_masks(rejected, chosen, mode="paper")
  assert marked(rejected, rej) == words("and a dog sits beside him")
  assert not cho.any()
  rej, cho = correction_masks(rejected, chosen, mode="rlhfv")
  assert not rej.any() and not cho.any()


def test_insertion_is_weighted_only_in_paper_mode():
  rejected = words("two birds sit on the fence in the morning light")
  chosen = words("two birds sit on the fence near a river in the morning light")
  rej, cho = correction_masks(rejected, chosen, mode="paper")
  assert not rej.any()
  assert marked(chosen, cho) == words("near a river")
  rej, cho = correction_masks(rejected, chosen, mode="rlhfv")
  assert not rej.any() and not cho.any()


@pytest.mark.parametrize("mode", ["paper", "rlhfv"])
def test_identical_answers_have_no_corrections(mode):
  rej, cho = correction_masks(REJ_REPLACE, REJ_REPLACE, mode=mode)
  assert rej.shape == (len(REJ_REPLACE),) and rej.dtype == bool
  assert not rej.any() and not cho.any()


def test_short_coincidental_matches_are_dropped():
  rejected = words("the cat is sitting on a red mat in the warm sun")
  chosen = words("the cat is lying under a chair in the warm sun")
  # "a" matches by coincidence inside the rewrite; with min_match=3 it is not "unchanged".
  rej, cho = correction_masks(rejected, chosen, min_match=3)
  assert marked(rejected, rej) == words("sitting on a red mat")
  assert marked(chosen, cho) == words("lying under a chair")
  rej, cho = correction_masks(rejected, chosen, min_match=1)
  assert marked(rejected, rej) == words("sitting on red mat")
  assert marked(chosen, cho) == words("lying under chair")


def test_rlhfv_mode_with_mixed_edits():
  # A replacement (both sides non-empty) and a pure deletion in one answer.
  rejected = words("the sky is green today as usual and three planes fly over the quiet town")
  chosen = words("the sky is blue today as usual and fly over the quiet town")
  rej, cho = correction_masks(rejected, chosen, mode="rlhfv")
  assert marked(rejected, rej) == ["green"]
  assert marked(chosen, cho) == ["blue"]
  rej, _ = correction_masks(rejected, chosen, mode="paper")
  assert marked(rejected, rej) == words("green three planes")


@pytest.mark.parametrize("mode", ["paper", "rlhfv"])
def test_edits_at_the_very_start_and_end_count(mode):
  rejected = words("A dog runs across the green park and barks")
  chosen = words("The cat runs across the green park and sleeps")
  rej, cho = correction_masks(rejected, chosen, mode=mode)
  assert marked(rejected, rej) == ["A", "dog", "barks"]
  assert marked(chosen, cho) == ["The", "cat", "sleeps"]


def test_long_responses_with_planted_edits():
  rng = np.random.default_rng(0)
  # Unique ids so every planted edit is unambiguous; 400 tokens engages difflib's
  # autojunk heuristic path (n >= 200), which the released rule keeps on.
  base = list(rng.permutation(10_000)[:400] + 100)
  chosen = list(base)
  replaced = [i for start in (40, 150, 290) for i in range(start, start + 4)]
  for i in replaced:  # three 4-token corrections with fresh ids
    chosen[i] = 20_000 + i
  # The rejected answer also has a 2-token hallucination that the labeler deleted.
  rejected_ids = base[:200] + [30_001, 30_002] + base[200:]
  expected_rej = np.isin(np.arange(len(base)), replaced)
  expected_rej = np.concatenate([expected_rej[:200], [True, True], expected_rej[200:]])
  rej, cho = correction_masks(rejected_ids, chosen, mode="paper")
  np.testing.assert_array_equal(rej, expected_rej)
  np.testing.assert_array_equal(cho, np.isin(np.arange(len(chosen)), replaced))
  rej_r, cho_r = correction_masks(rejected_ids, chosen, mode="rlhfv")
  # Replacements survive, the pure insertion at 200 does not.
  assert rej_r.sum() == 12 and not rej_r[200:202].any()
  assert cho_r.sum() == 12


def test_rlhfv_masks_are_a_subset_of_paper_masks():
  rng = np.random.default_rng(1)
  for _ in range(50):
    a = list(rng.integers(0, 8, size=rng.integers(1, 40)))
    b = list(rng.integers(0, 8, size=rng.integers(1, 40)))
    pr, pc = correction_masks(a, b, mode="paper", min_match=2)
    rr, rc = correction_masks(a, b, mode="rlhfv", min_match=2)
    assert not (rr & ~pr).any() and not (rc & ~pc).any()


def test_bad_arguments():
  with pytest.raises(ValueError, match="mode"):
    correction_masks([1], [1], mode="dense")
  with pytest.raises(ValueError, match="min_match"):
    correction_masks([1], [1], min_match=0)


def test_with_the_real_llava_tokenizer(llama_tokenizer_path):
  sp = sentencepiece.SentencePieceProcessor(model_file=str(llama_tokenizer_path))
  rejected = "The image shows a red double-decker bus parked beside a tall clock tower at night."
  chosen = "The image shows a red double-decker bus parked beside a small bakery during the day."
  rej_ids, cho_ids = sp.encode(rejected), sp.encode(chosen)
  rej, cho = correction_masks(rej_ids, cho_ids)
  # The final "." is a 1-token match (< min_match), so it joins the corrected segment.
  assert sp.decode([t for t, m in zip(rej_ids, rej) if m]) == "tall clock tower at night."
  assert sp.decode([t for t, m in zip(cho_ids, cho) if m]) == "small bakery during the day."
  # The unchanged prefix is never marked.
  prefix = len(sp.encode("The image shows a red double-decker bus parked beside a"))
  assert not rej[:prefix].any() and not cho[:prefix].any()
