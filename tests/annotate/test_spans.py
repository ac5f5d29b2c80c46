"""Corrected-segment spans from an answer and its correction (hand cases + properties)."""

from __future__ import annotations

import random
import re

import pytest

from rlhfv_jax.annotate.spans import correction_spans


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
