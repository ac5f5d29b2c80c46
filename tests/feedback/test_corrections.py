"""Deletion corrections and RLAIF-V ranking pairs, against hand-computed cases."""

from __future__ import annotations

import itertools
import math

import pytest

from rlhfv_jax.annotate.spans import correction_spans
from rlhfv_jax.feedback.corrections import (Correction, RankingPair, ScoredAnswer,
                                            balanced_length_ratio, delete_failed,
                                            ranking_pairs)


def _spans(text: str, words: list[str]) -> list[tuple[int, int]]:
  """The spans of `words` in `text` (the first occurrence of each)."""
  return [(text.index(w), text.index(w) + len(w)) for w in words]


def _marked(text: str, spans) -> list[str]:
  return [text[a:b] for a, b in spans]


# (answer, failed mentions, correction, deleted texts); for each the project's word diff
# marks the same characters as rejected.
DIFF_AGREES = [
    # A clause of ", and".
    ("A cat sits on a sofa, and a dog sleeps on the rug.", ["dog"],
     "A cat sits on a sofa.", [", and a dog sleeps on the rug"]),
    # List items: the item with its separator, the list re-glued.
    ("There are a cat, a dog and a bird.", ["dog"],
     "There are a cat and a bird.", [", a dog"]),
    ("There are a cat, a dog and a bird.", ["cat"],
     "There are a dog and a bird.", ["a cat,"]),
    # Two failures in one sentence.
    ("There are a cat, a dog, and a bird.", ["dog", "bird"],
     "There are a cat.", [", a dog, and a bird"]),
    ("A cat, a dog and a bird sit on the sofa.", ["dog"],
     "A cat and a bird sit on the sofa.", [", a dog"]),
    # A trailing "with <noun phrase>".
    ("A man sits on a bench with a dog. The sky is blue.", ["dog"],
     "A man sits on a bench. The sky is blue.", ["with a dog"]),
    ("A man sits with a dog and a ball.", ["dog"], "A man sits with a ball.", ["a dog and"]),
    ("A cat sits on a sofa with a pillow, and a dog sleeps.", ["pillow"],
     "A cat sits on a sofa, and a dog sleeps.", ["with a pillow"]),
    # Whole sentences: the main clause, or no coordination to cut.
    ("A man sits on a bench with a dog. The sky is blue.", ["man"],
     "The sky is blue.", ["A man sits on a bench with a dog."]),
    ("A man sits on a bench with a dog. The sky is blue.", ["sky"],
     "A man sits on a bench with a dog.", ["The sky is blue."]),
    ("A black and white cat sits on a sofa. A dog runs.", ["cat"],
     "A dog runs.", ["A black and white cat sits on a sofa."]),
    # Failures in different sentences.
    ("A cat. A dog. A bird. A cow.", ["dog", "cow"], "A cat. A bird.", ["A dog.", "A cow."]),
    ("A cat. A dog. A bird.", ["cat", "A bird"], "A dog.", ["A cat.", "A bird."]),
    # A middle part of ";": the separator after it goes, as the diff reads it.
    ("A cat sleeps; a dog plays; a bird sings.", ["dog"],
     "A cat sleeps; a bird sings.", ["a dog plays;"]),
    # Unicode: offsets count code points.
    ("Un chat dort. A café has a table, and a chair stands outside.", ["chair"],
     "Un chat dort. A café has a table.", [", and a chair stands outside"]),
    ("Une tasse de café ☕ est là. Il y a un chien.", ["chien"],
     "Une tasse de café ☕ est là.", ["Il y a un chien."]),
    # Leading and trailing whitespace and line breaks are kept.
    ("  A cat.\nA dog.  ", ["cat"], "  A dog.  ", ["A cat."]),
]

# Cases where a glue repair (a capital letter, a moved "and", "are" -> "is") makes the
# word diff mark a differently slid or longer span: the text is asserted, and the deleted
# spans by hand.
GLUE = [
    ("A cat sits on a sofa, and a dog sleeps on the rug.", ["cat"],
     "A dog sleeps on the rug.", ["A cat sits on a sofa, and"]),
    ("There are a cat, a dog and a bird.", ["bird"],
     "There are a cat and a dog.", ["and a bird"]),
    # Two noun phrases take no Oxford comma.
    ("There are a cat, a dog, and a bird.", ["dog"],
     "There are a cat and a bird.", [", a dog"]),
    ("A cat sleeps while a dog plays.", ["cat"], "A dog plays.", ["A cat sleeps while"]),
    ("A man and a woman are standing.", ["woman"], "A man is standing.", ["and a woman"]),
    ("A cat sits, a dog naps, and a bird sings.", ["dog"],
     "A cat sits, and a bird sings.", [", a dog naps"]),
    ("élan: a cat sits, and a dog sleeps.", ["cat"], "a dog sleeps.",
     ["élan: a cat sits, and"]),
    ("Élan of a cat sits, and a dog sleeps.", ["cat"], "A dog sleeps.",
     ["Élan of a cat sits, and"]),
]


@pytest.mark.parametrize("text, failed, corrected, deleted", DIFF_AGREES)
def test_deletions_agree_with_the_word_diff(text, failed, corrected, deleted):
  c = delete_failed(text, _spans(text, failed))
  assert c.text == corrected
  assert _marked(text, c.deleted) == deleted
  assert correction_spans(text, c.text)[0] == list(c.deleted)


@pytest.mark.parametrize("text, failed, corrected, deleted", GLUE)
def test_deletions_with_glue_repairs(text, failed, corrected, deleted):
  c = delete_failed(text, _spans(text, failed))
  assert c.text == corrected
  assert _marked(text, c.deleted) == deleted


@pytest.mark.parametrize("text, failed", [
    ("There are a cat, a dog, and a bird.", ["dog", "bird", "cat"]),
    ("A cat sits on a sofa.", ["sofa"]),
    # A plural verb that cannot be made to agree takes the sentence with it.
    ("A cat and a dog sit on the sofa.", ["dog"]),
    ("A cat. A dog.", ["cat", "dog"]),
])
def test_all_deleted_gives_an_empty_correction(text, failed):
  c = delete_failed(text, _spans(text, failed))
  assert c.text == ""  # the caller skips it
  assert _marked(text, c.deleted) == [text]


def test_no_failures_and_empty_input():
  assert delete_failed("A cat.", []) == Correction("A cat.", ())
  assert delete_failed("", []) == Correction("", ())


def test_overlapping_and_repeated_spans_delete_once():
  text = "There are a cat, a dog and a bird."
  dog = _spans(text, ["dog"])[0]
  once = delete_failed(text, [dog])
  assert delete_failed(text, [dog, dog, (dog[0] - 2, dog[1]), (dog[0] + 1, dog[1])]) == once


def test_a_span_across_sentences_deletes_both():
  text = "A cat. A dog. A bird."
  c = delete_failed(text, [(text.index("cat"), text.index("dog") + 1)])
  assert c.text == "A bird."
  assert _marked(text, c.deleted) == ["A cat. A dog."]


@pytest.mark.parametrize("span", [(-1, 2), (3, 3), (5, 2), (0, 7)])
def test_spans_out_of_range_are_errors(span):
  with pytest.raises(ValueError, match=rf"\({span[0]}, {span[1]}\).*length 6"):
    delete_failed("A cat.", [span])
  with pytest.raises(ValueError, match="length 0"):
    delete_failed("", [(0, 1)])


def test_a_span_on_whitespace_only_is_an_error():
  with pytest.raises(ValueError, match="whitespace"):
    delete_failed("A cat.  A dog.", [(6, 8)])


@pytest.mark.parametrize("text, mentions", [
    ("There are a cat, a dog, and a bird on the table.", ["cat", "dog", "bird", "table"]),
    ("A cat sits on a sofa, and a dog sleeps on the rug while a bird sings; two cows "
     "graze with a horse.", ["cat", "sofa", "dog", "rug", "bird", "cows", "horse"]),
    ("A man and a woman are standing near a car with a bike. Some people watch.",
     ["man", "woman", "car", "bike", "people"]),
    ("The image shows a table, a cup, and a plate, and a fork lies beside them.",
     ["table", "cup", "plate", "fork"]),
])
def test_every_combination_of_failures_is_cleanly_punctuated(text, mentions):
  spans = _spans(text, mentions)
  for n in range(1, len(spans) + 1):
    for failed in itertools.combinations(spans, n):
      c = delete_failed(text, failed)
      out = c.text
      deleted = [text[a:b] for a, b in c.deleted]
      assert all(d == d.strip() for d in deleted)
      assert list(c.deleted) == sorted(c.deleted)
      # Every failed mention is gone (marked), every kept character is outside them.
      for a, b in failed:
        assert any(s <= a and b <= e for s, e in c.deleted), (out, text[a:b])
      if not out:
        continue
      for bad in ("  ", " ,", ",,", ", .", ",.", " .", " ;", "; .", "and.", "with.",
                  "while.", " and and ", ", ;"):
        assert bad not in out, (failed, out)
      assert out[0].isupper() and out.rstrip()[-1] == ".", out
      assert not out.endswith(("and.", "or.", ",.")), out
      for sentence in out.split(". ")[1:]:
        assert sentence[0].isupper(), out


def _a(answer_id, failed, claims=5, words=10):
  return ScoredAnswer(answer_id, " ".join([answer_id] * words), failed, claims)


def test_pairs_by_score_gap():
  answers = [_a("a", 0), _a("b", 1), _a("c", 1), _a("d", 3)]
  # Candidates: a>b, a>c, a>d (gap 3), b>d, c>d (gap 2); b, c tie: no pair.
  assert ranking_pairs(answers) == [RankingPair("a", "d", 0, -3),
                                    RankingPair("b", "d", -1, -3)]
  assert [(p.chosen_id, p.rejected_id) for p in ranking_pairs(answers, max_pairs=10)] == [
      ("a", "d"), ("b", "d"), ("c", "d"), ("a", "b"), ("a", "c")]
  assert [(p.chosen_id, p.rejected_id) for p in ranking_pairs(answers, min_gap=2.5)] == [
      ("a", "d")]
  assert ranking_pairs(answers, max_pairs=0) == []


def test_ties_and_gaps_below_min_give_no_pairs():
  assert ranking_pairs([_a("a", 2), _a("b", 2), _a("c", 2)]) == []
  assert ranking_pairs([_a("a", 0), _a("b", 1)], min_gap=1.5) == []
  # The same text is no preference, whatever the scores.
  same = [ScoredAnswer("a", "A cat.", 0, 1), ScoredAnswer("b", " A cat. ", 1, 1)]
  assert ranking_pairs(same) == []


def test_k_equal_one_and_answers_without_claims():
  assert ranking_pairs([_a("a", 0)]) == []
  assert ranking_pairs([]) == []
  # No claims: no verdicts, no score, never paired.
  assert ranking_pairs([_a("a", 0, claims=0), _a("b", 2)]) == []


def test_equal_gaps_prefer_the_smaller_length_difference_then_ids():
  answers = [_a("a", 0, words=10), _a("b", 0, words=12), _a("c", 2, words=13),
             _a("d", 2, words=11)]
  # Gap 2 each: |10-13|=3, |10-11|=1, |12-13|=1, |12-11|=1.
  assert [(p.chosen_id, p.rejected_id) for p in ranking_pairs(answers, max_pairs=3)] == [
      ("a", "d"), ("b", "c"), ("b", "d")]
  assert ranking_pairs(list(reversed(answers)), max_pairs=3) == ranking_pairs(answers,
                                                                               max_pairs=3)


def test_the_length_filter_drops_a_much_longer_rejected_answer():
  answers = [_a("a", 0, words=10), _a("b", 3, words=21), _a("c", 2, words=20)]
  # Selected: a>b (gap 3), a>c (gap 2); b has 21 > 2 * 10 words: dropped, not replaced.
  assert ranking_pairs(answers) == [RankingPair("a", "c", 0, -2)]
  assert len(ranking_pairs(answers, max_length_ratio=math.inf)) == 2
  assert ranking_pairs(answers, max_length_ratio=1.0) == []
  # A longer chosen answer is never filtered.
  assert len(ranking_pairs([_a("a", 0, words=50), _a("b", 1, words=5)],
                           max_length_ratio=1.0)) == 1


def test_balanced_length_ratio_follows_rlaif_v_search():
  # d = 0 keeps (10, 10), (20, 10): chosen 30, rejected 20 -> 0.5; d = 0.5 (ratio 2)
  # also keeps (10, 20): 40 vs 40 -> 0, the first least; d > 0.6 adds (10, 30): worse.
  pairs = [(10, 10), (20, 10), (10, 20), (10, 30)]
  ratio = balanced_length_ratio(pairs)
  assert ratio == pytest.approx(2.0)
  assert [not (r > ratio * c) for c, r in pairs] == [True, True, True, False]
  with pytest.raises(ValueError):
    balanced_length_ratio([])


@pytest.mark.parametrize("make, match", [
    (lambda: ranking_pairs([_a("a", 0), _a("a", 1)]), "duplicate"),
    (lambda: ScoredAnswer("a", "x", -1, 2), "failed=-1"),
    (lambda: ScoredAnswer("a", "x", 0, -2), "claims=-2"),
    (lambda: ScoredAnswer("a", "x", 3, 2), "failed=3"),
    (lambda: ranking_pairs([], min_gap=0), "min_gap"),
    (lambda: ranking_pairs([], max_pairs=-1), "max_pairs"),
    (lambda: ranking_pairs([], max_length_ratio=0.5), "max_length_ratio"),
])
def test_bad_input_is_an_error(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_a_bare_noun_phrase_never_opens_what_is_left():
  text = "The image shows a table, a cup, and a plate, and a fork lies beside them. A dog."
  c = delete_failed(text, _spans(text, ["table"]))
  assert c.text == "A dog."
  c = delete_failed(text, _spans(text, ["cup"]))
  assert c.text == "The image shows a table, a plate, and a fork lies beside them. A dog."


@pytest.mark.parametrize("text, failed, corrected", [
    # A fronted adverbial is no sentence alone: the whole part goes with its clause.
    ("At the top right, there is a small green square. On the left, I can see a cat.",
     ["green square"], "On the left, I can see a cat."),
    ("In the background, there is a dog, and a cat sleeps.", ["dog"], ""),
    # A clause with its own verb stays.
    ("On the left, a cat sits. A dog runs, and a bird sings.", ["bird"],
     "On the left, a cat sits. A dog runs."),
])
def test_a_fronted_adverbial_never_stands_alone(text, failed, corrected):
  assert delete_failed(text, _spans(text, failed)).text == corrected
