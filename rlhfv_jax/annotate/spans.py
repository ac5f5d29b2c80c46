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

  >>> correction_spans("A red car and a dog.", "A blue car and a dog.")
  ([(2, 5)], [(2, 6)])
"""

from __future__ import annotations

import difflib
import re

Span = tuple[int, int]
_TOKENS = re.compile(r"\s+|\w+|[^\w\s]")


def _tokens(text: str) -> list[re.Match]:
  return list(_TOKENS.finditer(text))


def _span(tokens: list[re.Match], first: int, last: int) -> Span | None:
  """The characters of tokens [first, last) without surrounding whitespace tokens."""
  while first < last and tokens[first].group().isspace():
    first += 1
  while last > first and tokens[last - 1].group().isspace():
    last -= 1
  return (tokens[first].start(), tokens[last - 1].end()) if first < last else None


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


def correction_spans(original: str, corrected: str) -> tuple[list[Span], list[Span]]:
  """(spans in `original`, spans in `corrected`) of the segments the correction changed.

  Both lists are sorted and disjoint; identical texts give two empty lists.
  """
  a, b = _tokens(original), _tokens(corrected)
  matcher = difflib.SequenceMatcher(None, [t.group() for t in a], [t.group() for t in b],
                                    autojunk=False)
  words_a, words_b = [t.group() for t in a], [t.group() for t in b]
  opcodes = matcher.get_opcodes()
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
    for tokens, first, last, out in ((a, i1, i2, rejected), (b, j1, j2, chosen)):
      span = _span(tokens, first, last)
      if span is not None:
        out.append(span)
  return _merged(rejected, original), _merged(chosen, corrected)
