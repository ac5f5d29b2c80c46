"""Corrected-segment spans from an answer and its correction (hand cases + properties)."""

from __future__ import annotations

import random
import re
import time

import pytest

from rlhfv_jax.annotate.spans import correction_spans, edit_spans


@pytest.mark.parametrize("original, corrected, rejected, chosen", [
    ("A red car and a dog.", "A blue car and a dog.", ["red"], ["blue"]),
    # A deleted sentence: marked in the original only, without the spaces around it.
    ("A cat sits. A dog runs. A bird sings.", "A cat sits. A bird sings.",
     ["A dog runs."], []),
    # Inserted words: marked in the correction only.
    ("There is a car.", "There is a small red car.", [], ["small red"]),
    # Adjacent changed words are one span; separate changes stay separate.
    ("I see two red apples and a pear.", "I see three green apples and a plum.",
     ["two red", "pear"], ["three green", "plum"]),
    ("Same text.", "Same text.", [], []),
    # Punctuation and non-ASCII words are tokens of their own.
    ("Un café, très chaud.", "Un thé, très chaud!", ["café", "."], ["thé", "!"]),
    # Without spaces between words, one character is one word: one changed character
    # is marked, not the clause around it.
    ("我看到一只黑色的猫坐在红色的桌子上。", "我看到一只白色的猫坐在红色的桌子上。",
     ["黑"], ["白"]),
    # Combining marks stay with their letter; characters outside the BMP are one each.
    ("🚗🚕 The cafe\u0301\u0301 is red.", "🚗🚕 The thé is red.",
     ["cafe\u0301\u0301"], ["thé"]),
])
def test_hand_made_cases(original, corrected, rejected, chosen):
  got_rejected, got_chosen = correction_spans(original, corrected)
  assert [original[s:e] for s, e in got_rejected] == rejected
  assert [corrected[s:e] for s, e in got_chosen] == chosen


def _unmarked_words(text, spans):
  kept = "".join(" " if any(s <= c < e for s, e in spans) else ch for c, ch in enumerate(text))
  return re.findall(r"\S+", kept)


def test_random_edits_mark_what_changed_and_nothing_else():
  words = "a the red blue car dog cat is on left right small big two three . ,".split()
  rng = random.Random(0)
  for _ in range(300):
    original = [rng.choice(words) for _ in range(rng.randint(1, 25))]
    corrected = list(original)
    for _ in range(rng.randint(1, 4)):
      at = rng.randrange(len(corrected) + 1)
      kind = rng.choice(("replace", "delete", "insert"))
      if kind == "insert" or not corrected:
        corrected.insert(at, rng.choice(words))
      elif kind == "delete" and at < len(corrected):
        del corrected[at]
      elif at < len(corrected):
        corrected[at] = rng.choice(words)
    a, b = " ".join(original), " ".join(corrected)
    rejected, chosen = correction_spans(a, b)
    for text, spans in ((a, rejected), (b, chosen)):
      assert spans == sorted(spans)
      assert all(s < e and e <= next_s for (s, e), (next_s, _) in zip(spans, spans[1:]))
      assert all(text[s:e] == text[s:e].strip() and text[s:e] for s, e in spans)
    # Outside the spans both texts say the same words, in the same order.
    assert _unmarked_words(a, rejected) == _unmarked_words(b, chosen), (a, b)
    if a == b:
      assert rejected == chosen == []
    else:
      assert rejected or chosen


def _between(text, first, after):
  """The span of `text` from where `first` starts to where `after` starts."""
  return text.index(first), text.index(after)


def test_edit_spans_are_exactly_the_edits():
  original = "A red car waits at a traffic light while two dogs play on the sidewalk."
  corrected = "A red car is parked while a dog plays on the sidewalk."
  edits = [(_between(original, "waits", " while"), _between(corrected, "is", " while")),
           (_between(original, "two", " on"), _between(corrected, "a dog", " on"))]
  rejected, chosen = edit_spans(original, corrected, edits)
  assert [original[s:e] for s, e in rejected] == ["waits at a traffic light", "two dogs play"]
  assert [corrected[s:e] for s, e in chosen] == ["is parked", "a dog plays"]
  # The diff of the same two texts marks the unchanged "while" (why the page sends its
  # edits).
  _, chosen = correction_spans(original, corrected)
  assert "while" in " ".join(corrected[s:e] for s, e in chosen)


def test_edit_spans_trim_merge_and_skip_whitespace_only_edits():
  original, corrected = "a red car,  here", "a blue truck, here"
  # "red" -> "blue" and " car" -> " truck" (with its space): one phrase on each side;
  # ",  " -> ", " changes whitespace only and marks nothing.
  edits = [((2, 5), (2, 6)), ((5, 9), (6, 12)), ((9, 12), (12, 14))]
  assert edit_spans(original, corrected, edits) == ([(2, 9)], [(2, 12)])
  # A deletion marks the answer only, an insertion the correction only.
  assert edit_spans("a red car", "a car", [((2, 6), (2, 2))]) == ([(2, 5)], [])
  assert edit_spans("a car", "a red car", [((2, 2), (2, 6))]) == ([], [(2, 5)])


@pytest.mark.parametrize("edits, message", [
    ([((2, 5), (2, 40))], "outside its text"),
    ([((2, 5), (2, 6)), ((4, 5), (5, 6))], "overlaps"),
    ([((6, 9), (7, 10))], "differ before it"),
    ([((2, 5), (2, 6)), ((0, 1), (0, 1))], "overlaps"),
    ([], "differ after the last edit"),
    ([((2, 5), (2, 5))], "differ after the last edit"),
])
def test_edit_spans_refuse_edits_that_do_not_make_the_correction(edits, message):
  with pytest.raises(ValueError, match=message):
    edit_spans("a red car", "a blue car", edits)


@pytest.mark.parametrize("original, corrected", [
    ("x " * 2_500, ". " * 2_500),  # thousands of equal tokens, matched one by one
    ("x y " * 1_250, "x z " * 1_250),
    ("a " * 10_000 + "end.", "b " * 10_000 + "end."),
])
def test_the_diff_is_bounded(original, corrected):
  """Inputs whose word diff takes minutes (cubic in the length) fall back, within a
  bounded amount of work, to one span from the first to the last change."""
  started = time.process_time()
  rejected, chosen = correction_spans(original, corrected)
  assert time.process_time() - started < 3.0
  first = next(k for k, (a, b) in enumerate(zip(original, corrected)) if a != b)
  assert rejected[0][0] == chosen[0][0] == first
  assert _unmarked_words(original, rejected) == _unmarked_words(corrected, chosen)


def test_answers_of_real_length_get_the_fine_diff():
  """A 4,000-character answer with edits spread over it: every edit its own span."""
  rng = random.Random(1)
  words = ("the a of and in on is there with left right red car dog man woman person "
           "table street building tree people holding wearing shirt two near behind "
           "scene appears this can be seen").split()
  sentences = []
  while sum(map(len, sentences)) < 4_000:
    sentences.append(" ".join(rng.choice(words) for _ in range(rng.randint(8, 16))) + ".")
  original = " ".join(sentences)[:4_000]
  tokens = original.split(" ")
  for k in range(5, len(tokens) - 5, len(tokens) // 12):
    tokens[k] = "zebra"
  corrected = " ".join(tokens)
  rejected, chosen = correction_spans(original, corrected)
  assert len(chosen) >= 10 and {corrected[s:e] for s, e in chosen} == {"zebra"}
