"""Character spans of the corrected segments of an answer and its correction.

An annotator rewrites only the hallucinated parts of a model answer. The corrected
segments are found by a word-level diff (`difflib`, whitespace runs kept as their own
tokens so that offsets are exact): every replaced, deleted or inserted run of words is a
segment, as half-open character spans into the verbatim texts, in the form the data
layer reads (`records.PreferenceRecord.chosen_spans` / `rejected_spans`). A deletion
marks a span in the original only, an insertion in the correction only. Spans never
start or end on whitespace, and spans separated only by whitespace are merged (one
rewritten phrase, not one span per word).

A deleted or inserted run can often sit in several places with the same result
("A cat sits. A dog runs. A bird sings." minus "A dog runs. " could also be read as
minus "dog runs. A "); like diff-match-patch's semantic clean-up, the run is slid to
the place whose edges are the best boundaries (text ends, line breaks, sentence ends,
whitespace, punctuation), so that what is marked is what a person would mark.

The diff's work is bounded (`DIFF_BUDGET`): difflib's matching is cubic in the length
when many tokens repeat (minutes for two 3,000-character texts of one repeated word), so
past the budget the change is marked as one span, from the first token that differs to
the last. Real answers stay far below it (a 4,000-character one: about a quarter).

Words are runs of letters, digits and "_" with their combining marks; in scripts written
without spaces between words (Chinese, Japanese, Thai, ...) every character is a word of
its own, so that changing one character marks that character, not the whole clause.
Offsets count code points (Python string indices); the page converts them to and from
its UTF-16 offsets.

  >>> correction_spans("A red car and a dog.", "A blue car and a dog.")
  ([(2, 5)], [(2, 6)])

The page knows the exact edits an annotator made (each selection it replaced); `edit_spans`
checks those and turns them into the same kind of spans, so the diff is needed only for
free edits.
"""

from __future__ import annotations

import difflib
import itertools
import unicodedata
from typing import Sequence

Span = tuple[int, int]
Edit = tuple[Span, Span]

# Scripts written without spaces between words: Thai, Lao, Myanmar, Khmer, CJK radicals,
# kana, CJK ideographs (with extensions and compatibility forms), half-width katakana.
_NO_SPACES = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x2E80, 0x2FDF),
              (0x3040, 0x30FF), (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
              (0xF900, 0xFAFF), (0xFF66, 0xFF9F), (0x20000, 0x3FFFF))
_ZWJ = "\u200d"
# Steps of difflib's inner loop the word diff may take (module docstring): under a
# second of CPU time.
DIFF_BUDGET = 10_000_000


def _no_spaces(ch: str) -> bool:
  code = ord(ch)
  return any(low <= code <= high for low, high in _NO_SPACES)


def _joins_previous(ch: str) -> bool:
  """Combining marks, variation selectors, emoji modifiers and the joiner stay with the
  character before them (one visible character is never split)."""
  return (unicodedata.category(ch).startswith("M") or ch == _ZWJ
          or 0x1F3FB <= ord(ch) <= 0x1F3FF)


def _tokens(text: str) -> list[Span]:
  """(start, end) of each token: a whitespace run, a word (module docstring), or any
  other single character, each with the marks that follow it."""
  tokens: list[list[int]] = []
  kind = None  # of the last token: "space", "word", "single"
  for i, ch in enumerate(text):
    if tokens and kind != "space" and (
        _joins_previous(ch) or text[i - 1] == _ZWJ):
      tokens[-1][1] = i + 1
      continue
    if ch.isspace():
      this = "space"
    elif (ch.isalnum() or ch == "_") and not _no_spaces(ch):
      this = "word"
    else:
      this = "single"
    if tokens and this == kind and this != "single":
      tokens[-1][1] = i + 1
    else:
      tokens.append([i, i + 1])
    kind = this
  return [(start, end) for start, end in tokens]


def _span(tokens: list[Span], words: list[str], first: int, last: int) -> Span | None:
  """The characters of tokens [first, last) without surrounding whitespace tokens."""
  while first < last and words[first].isspace():
    first += 1
  while last > first and words[last - 1].isspace():
    last -= 1
  return (tokens[first][0], tokens[last - 1][1]) if first < last else None


def _merged(spans: list[Span], text: str) -> list[Span]:
  out: list[Span] = []
  for start, end in spans:
    if out and not text[out[-1][1]:start].strip():
      out[-1] = (out[-1][0], end)
    else:
      out.append((start, end))
  return out


def _edge_score(tokens: list[str], at: int) -> int:
  """How good a boundary the place before `tokens[at]` is (higher: better)."""
  if at <= 0 or at >= len(tokens):
    return 6
  before, after = tokens[at - 1], tokens[at]
  if "\n\n" in before or "\n\n" in after:
    return 5
  if "\n" in before or "\n" in after:
    return 4
  if before in (".", "!", "?") and after.isspace():
    return 3
  if before.isspace() or after.isspace():
    return 2
  if not before[-1].isalnum() or not after[0].isalnum():
    return 1
  return 0


def _slid(tokens: list[str], start: int, end: int, low: int, high: int) -> tuple[int, int]:
  """The best place of the run tokens[start:end], free to slide over the unchanged tokens
  in [low, high) around it (module docstring)."""
  places = [(start, end)]
  s, e = start, end
  while s > low and tokens[s - 1] == tokens[e - 1]:
    s, e = s - 1, e - 1
    places.append((s, e))
  s, e = start, end
  while e < high and tokens[e] == tokens[s]:
    s, e = s + 1, e + 1
    places.append((s, e))
  return max(places, key=lambda p: (_edge_score(tokens, p[0]) + _edge_score(tokens, p[1]),
                                    -p[0]))


class _OverBudget(Exception):
  """The word diff would take more than `DIFF_BUDGET` steps."""


class _BoundedMatcher(difflib.SequenceMatcher):
  """A SequenceMatcher that stops (`_OverBudget`) before its work passes `budget` steps.

  The work is in `find_longest_match`, whose inner loop visits, for each token of `a`
  in its range, that token's places in `b`: counted from prefix sums before each call,
  so that a call which would overrun is never started.
  """

  def __init__(self, a: Sequence[str], b: Sequence[str], budget: int):
    super().__init__(None, a, b, autojunk=False)
    steps = (1 + len(self.b2j.get(token, ())) for token in a)
    self._steps = [0, *itertools.accumulate(steps)]
    self._left = budget

  def find_longest_match(self, alo=0, ahi=None, blo=0, bhi=None):
    ahi = len(self.a) if ahi is None else ahi
    self._left -= self._steps[ahi] - self._steps[alo]
    if self._left < 0:
      raise _OverBudget
    return super().find_longest_match(alo, ahi, blo, bhi)


def _opcodes(a: list[str], b: list[str]) -> list[tuple[str, int, int, int, int]]:
  """difflib's opcodes turning tokens `a` into `b`; past the budget, one change from the
  first token that differs to the last (coarse, never wrong)."""
  try:
    return _BoundedMatcher(a, b, DIFF_BUDGET).get_opcodes()
  except _OverBudget:
    pass
  shorter = min(len(a), len(b))
  head = 0
  while head < shorter and a[head] == b[head]:
    head += 1
  tail = 0
  while tail < shorter - head and a[-1 - tail] == b[-1 - tail]:
    tail += 1
  end_a, end_b = len(a) - tail, len(b) - tail
  opcodes = [("equal", 0, head, 0, head)] if head else []
  if head < end_a or head < end_b:
    tag = "replace" if head < end_a and head < end_b else "delete" if head < end_a else "insert"
    opcodes.append((tag, head, end_a, head, end_b))
  if tail:
    opcodes.append(("equal", end_a, len(a), end_b, len(b)))
  return opcodes


def correction_spans(original: str, corrected: str) -> tuple[list[Span], list[Span]]:
  """(spans in `original`, spans in `corrected`) of the segments the correction changed.

  Both lists are sorted and disjoint; identical texts give two empty lists.
  """
  a, b = _tokens(original), _tokens(corrected)
  words_a = [original[s:e] for s, e in a]
  words_b = [corrected[s:e] for s, e in b]
  opcodes = _opcodes(words_a, words_b)
  rejected, chosen = [], []
  for k, (tag, i1, i2, j1, j2) in enumerate(opcodes):
    if tag == "equal":
      continue
    # A pure deletion (insertion) may slide over the unchanged tokens around it.
    before = opcodes[k - 1] if k > 0 and opcodes[k - 1][0] == "equal" else None
    after = opcodes[k + 1] if k + 1 < len(opcodes) and opcodes[k + 1][0] == "equal" else None
    if tag == "delete":
      i1, i2 = _slid(words_a, i1, i2, before[1] if before else i1, after[2] if after else i2)
    elif tag == "insert":
      j1, j2 = _slid(words_b, j1, j2, before[3] if before else j1, after[4] if after else j2)
    for tokens, words, first, last, out in ((a, words_a, i1, i2, rejected),
                                            (b, words_b, j1, j2, chosen)):
      span = _span(tokens, words, first, last)
      if span is not None:
        out.append(span)
  return _merged(rejected, original), _merged(chosen, corrected)


def trimmed(text: str, start: int, end: int) -> Span | None:
  """text[start:end] without its leading and trailing whitespace; None if nothing is
  left."""
  while start < end and text[start].isspace():
    start += 1
  while end > start and text[end - 1].isspace():
    end -= 1
  return (start, end) if start < end else None


def edit_spans(original: str, corrected: str,
               edits: Sequence[Edit]) -> tuple[list[Span], list[Span]]:
  """(spans in `original`, spans in `corrected`) of the edits an annotator made.

  Args:
    original: the model's answer.
    corrected: the annotator's correction.
    edits: ``((start, end), (start, end))`` pairs, sorted: the span of `original` that was
      replaced and the span of `corrected` that replaced it (either may be empty: a
      deletion, an insertion). Outside the edits the two texts must be identical, so
      that `corrected` is `original` with the edits applied.

  Returns:
    The spans as `correction_spans` gives them: without whitespace at their edges,
    spans separated only by whitespace merged, edits that change only whitespace left
    out.

  Raises:
    ValueError: a span outside its text, spans out of order or overlapping, or texts
      that differ outside the edits (each message names the edit).
  """
  rejected: list[Span] = []
  chosen: list[Span] = []
  done_a = done_b = 0  # where the previous edit ended, in each text
  for k, edit in enumerate(edits):
    (start_a, end_a), (start_b, end_b) = edit
    if not (0 <= start_a <= end_a <= len(original) and 0 <= start_b <= end_b <= len(corrected)):
      raise ValueError(f"edit {k}: a span outside its text (the answer has {len(original)} "
                       f"characters, the correction {len(corrected)})")
    if start_a < done_a or start_b < done_b:
      raise ValueError(f"edit {k}: overlaps the edit before it or comes before it")
    if original[done_a:start_a] != corrected[done_b:start_b]:
      raise ValueError(f"edit {k}: the texts differ before it, outside the edits")
    done_a, done_b = end_a, end_b
    span_a, span_b = trimmed(original, start_a, end_a), trimmed(corrected, start_b, end_b)
    text_a = original[span_a[0]:span_a[1]] if span_a else ""
    text_b = corrected[span_b[0]:span_b[1]] if span_b else ""
    if text_a == text_b:  # only whitespace changed: nothing to mark
      continue
    if span_a:
      rejected.append(span_a)
    if span_b:
      chosen.append(span_b)
  if original[done_a:] != corrected[done_b:]:
    raise ValueError("the texts differ after the last edit, outside the edits")
  return _merged(rejected, original), _merged(chosen, corrected)
