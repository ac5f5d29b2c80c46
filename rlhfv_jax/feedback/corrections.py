"""Products of a labeler's verdicts: fine-grained corrections and ranking pairs.

A labeler (`issues show 26`) marks some claims of an answer as failed. Two products come
out of that:

* `delete_failed`: a fine-grained correction of one answer. The smallest unit carrying
  each failed claim is deleted (a list item, a "with ..." attachment, a clause, or the
  whole sentence) and the text is re-glued so that it reads cleanly. The deleted spans
  point into the original answer, so that DDPO's gamma weight lands on exactly what the
  labeler rejected.
* `ranking_pairs`: RLAIF-V's preference pairs among the K answers sampled for one
  prompt, scored by their number of failed claims.

Both are plain text rules, without a parser: they recognise the shapes model answers
usually take ("There are a cat, a dog and a bird.", "A cat sits on a sofa, and a dog
sleeps on the rug.", "A man sits on a bench with a dog.") and, when a sentence has no
shape they recognise, delete more (the whole sentence) rather than leave broken text.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Sequence

from rlhfv_jax.annotate.spans import Span, trimmed

# Words that open a noun phrase.
_DETERMINERS = frozenset("""
a an the some several many few one two three four five six seven eight nine ten eleven
twelve another his her their its my our your this that these those each every no both
multiple various numerous other
""".split())
# Words that open a noun phrase or a clause: a list or clause separator is only read as
# one when such a word follows it ("a black and white cat" stays one phrase).
_STARTERS = _DETERMINERS | frozenset("there he she it they i we you".split())
# Finite verbs common in image descriptions: a phrase holding one is a clause, not a
# list item. Participles ("a dog sleeping on the rug") stay noun phrases, as they should.
_VERBS = frozenset("""
is are was were be been am has have had can could will would should may might must do
does did 's sits sit stands stand lies lie lays lay sleeps sleep holds hold rests rest
appears appear seems seem looks look wears wear plays play runs run walks walk flies fly
eats eat drinks drink rides ride hangs hang covers cover contains contain shows show
includes include features feature surrounds surround faces face carries carry waits
wait grazes graze swims swim stares stare watches watch uses use leans lean sat stood
lay slept held rested appeared seemed looked wore played ran walked flew ate rode hung
covered contained showed included featured surrounded faced carried waited grazed swam
watched used leaned reads read there's it's that's perches perch floats float moves move parks park
""".split())
# An item of a noun-phrase list is short; a longer phrase is read as a clause.
_MAX_PHRASE_WORDS = 6
# Subject-verb agreement when a plural subject list shrinks to one item.
_SINGULAR = {"are": "is", "were": "was", "have": "has"}

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|'s")
_STARTER = r"(?=(?:" + "|".join(sorted(_STARTERS)) + r"|\d+)\b)"
# Separators between the independent parts of a sentence.
_PART_SEP = re.compile(r"\s*;\s*|,?\s+while\s+|,\s+but\s+", re.IGNORECASE)
# Separators between coordinated conjuncts (list items or clauses) of a part.
_LIST_SEP = re.compile(r"(?:,\s+(?:and|or)\s+|\s+(?:and|or)\s+|,\s+)" + _STARTER,
                       re.IGNORECASE)
_WITH = re.compile(r",?\s+with\s+", re.IGNORECASE)
_TERMINAL = re.compile(r"[.!?]+[\"'”’)\]]*$")


@dataclasses.dataclass(frozen=True)
class Correction:
  """A correction made by deletions.

  Attributes:
    text: the corrected answer; empty when every sentence carried a failed claim (the
      caller treats an emptied answer as a skip: there is nothing left to prefer).
    deleted: sorted, disjoint half-open spans into the ORIGINAL answer of what was
      removed (each deleted unit with the separator that went with it), never starting
      or ending on whitespace, spans separated only by whitespace merged, as
      `annotate.spans.correction_spans` gives its rejected spans. Glue repairs (a comma
      rewritten as "and", a capital letter, "are" -> "is") carry no claim and are not
      marked.
  """
  text: str
  deleted: tuple[Span, ...]


def _words(s: str) -> list[str]:
  return [w.lower() for w in _WORD.findall(s)]


def _noun_phrase(s: str) -> bool:
  """Whether `s` reads as a noun phrase: opened by a determiner or a number, short,
  without a finite verb."""
  words = _words(s)
  return (0 < len(words) <= _MAX_PHRASE_WORDS
          and (words[0] in _DETERMINERS or words[0].isdigit())
          and not any(w in _VERBS for w in words))


def _fragment(s: str) -> bool:
  """Whether `s` is neither a clause (no finite verb) nor a noun phrase: a fronted
  adverbial ("At the top right", "In the background") that cannot stand alone."""
  return not _noun_phrase(s) and not any(w in _VERBS for w in _words(s))


def _split(text: str, start: int, end: int, sep: re.Pattern) -> tuple[list[Span], list[Span]]:
  """Pieces of text[start:end] between the matches of `sep`, and the matches."""
  pieces, seps = [], []
  at = start
  for m in sep.finditer(text, start, end):
    if m.start() == at or m.end() == end:  # a separator must sit between two pieces
      continue
    pieces.append((at, m.start()))
    seps.append((m.start(), m.end()))
    at = m.end()
  pieces.append((at, end))
  return pieces, seps


def _sentences(text: str) -> list[Span]:
  """Spans of the sentences: a run of ".", "!" or "?" (and closing quotes) followed by
  whitespace or the end closes one, and so does a line break. Abbreviations ("e.g.")
  are not recognised."""
  out = []
  at = 0
  for m in re.finditer(r"[.!?]+[\"'”’)\]]*(?=\s|$)|\n", text):
    span = trimmed(text, at, m.end())
    if span:
      out.append(span)
    at = m.end()
  span = trimmed(text, at, len(text))
  if span:
    out.append(span)
  return out


@dataclasses.dataclass(frozen=True)
class _Part:
  """One independent part of a sentence and how it is built.

  `items` are its conjuncts: noun phrases (`noun_list`, between an optional `lead`,
  "There are ", and an optional shared predicate after the last, " are on a sofa") or
  clauses. `attachments[k]` is the span of a trailing "with ..." of clause k (from its
  separator on), or None.
  """
  span: Span
  items: list[Span]
  seps: list[Span]
  noun_list: bool
  attachments: list[Span | None]

  def lead(self) -> Span:
    return (self.span[0], self.items[0][0])

  def tail(self) -> Span:
    return (self.items[-1][1], self.span[1])


def _attachment(text: str, start: int, end: int) -> Span | None:
  """A trailing "with <noun phrase>" of text[start:end], from its separator on."""
  for m in _WITH.finditer(text, start, end):
    if m.start() > start and _noun_phrase(text[m.end():end]):
      return (m.start(), end)
  return None


def _part(text: str, start: int, end: int) -> _Part:
  items, seps = _split(text, start, end, _LIST_SEP)
  phrase = [_noun_phrase(text[s:e]) for s, e in items]
  if len(items) >= 2 and all(phrase[1:-1]):
    first, last = items[0], items[-1]
    if phrase[0] and phrase[-1]:
      return _Part((start, end), items, seps, True, [None] * len(items))
    if phrase[0]:
      # A subject list with a shared predicate: "A cat and a dog are on a sofa."
      for m in _WORD.finditer(text, last[0], last[1]):
        if m.group().lower() in _VERBS:
          head = trimmed(text, last[0], m.start())
          if head and _noun_phrase(text[head[0]:head[1]]):
            return _Part((start, end), items[:-1] + [head], seps, True, [None] * len(items))
          break
    elif phrase[-1]:
      # A lead before the first item: "There are a cat, a dog and a bird."
      for m in reversed(list(_WORD.finditer(text, first[0], first[1]))):
        if m.group().lower() in _DETERMINERS and m.start() > first[0]:
          if _noun_phrase(text[m.start():first[1]]):
            items = [(m.start(), first[1])] + items[1:]
            return _Part((start, end), items, seps, True, [None] * len(items))
          break
  return _Part((start, end), items, seps, False,
               [_attachment(text, s, e) for s, e in items])


def _inside(span: Span, unit: Span) -> bool:
  return unit[0] <= span[0] and span[1] <= unit[1]


def _capitalised(rendered: str, original: str) -> str:
  """A sentence whose opening was deleted starts with a capital letter if the original
  did."""
  if rendered and original[0].isupper() and rendered[0] != original[0]:
    return rendered[0].upper() + rendered[1:]
  return rendered


def _glued(pieces: list[str], final_sep: str, noun_list: bool) -> str:
  """Items joined as a list: ", " between them and the original last separator (", and
  ", " or ", ...) before the last; two noun phrases take no comma ("a cat and a dog")."""
  if len(pieces) == 1:
    return pieces[0]
  if noun_list and len(pieces) == 2 and re.match(r",\s*\S", final_sep):
    final_sep = " " + final_sep[1:].lstrip()
  return ", ".join(pieces[:-1]) + final_sep + pieces[-1]


def _separator(text: str, seps: list[Span], k: int) -> Span:
  """The separator deleted with unit k of those that `seps` separate: the one before it
  (after it for the first), or after it when both are the same text, as the word diff
  of `annotate.spans` marks the deletion of a middle unit ("a dog, " of "a cat, a dog,
  a bird")."""
  if k == 0 or (k < len(seps) and text[slice(*seps[k - 1])] == text[slice(*seps[k])]):
    return seps[k]
  return seps[k - 1]


def _render_part(text: str, part: _Part, gone: set[int],
                 cut: set[int]) -> tuple[str | None, list[Span]]:
  """The text of `part` without items `gone` and attachments `cut`, and the spans
  deleted; None if nothing of it is left."""
  s, e = part.span
  if not gone and not cut:
    return text[s:e], []
  keep = [k for k in range(len(part.items)) if k not in gone]
  if not keep:
    return None, [part.span]
  if (not part.noun_list and keep[0] > 0 and not _noun_phrase(text[slice(*part.items[0])])
      and _noun_phrase(text[slice(*part.items[keep[0]])])):
    # "The image shows a table, a cup, and a fork lies ..." without its first clause
    # would open on a bare noun phrase that had no verb of its own.
    return None, [part.span]
  if not part.noun_list and any(_fragment(text[slice(*part.items[k])]) for k in keep):
    # "At the top right, there is a green square." without its clause would leave the
    # fronted adverbial alone: "At the top right."
    return None, [part.span]
  tail = text[part.tail()[0]:part.tail()[1]] if part.noun_list else ""
  if part.noun_list and tail and len(keep) == 1 and len(part.items) > 1:
    m = re.match(r"(\s+)(\w+)", tail)
    verb = m.group(2) if m else ""
    if verb.lower() not in _SINGULAR:
      return None, [part.span]  # "A cat sit on a sofa": agreement we cannot repair
    singular = _SINGULAR[verb.lower()]
    tail = m.group(1) + (singular.capitalize() if verb[0].isupper() else singular) + tail[m.end():]
  deleted = [(part.items[k][0], part.items[k][1]) for k in gone]
  deleted += [_separator(text, part.seps, k) for k in gone]
  pieces = []
  for k in keep:
    start, end = part.items[k]
    if k in cut:
      deleted.append(part.attachments[k])
      end = part.attachments[k][0]
    pieces.append(text[start:end])
  if gone:
    body = _glued(pieces, text[part.seps[-1][0]:part.seps[-1][1]], part.noun_list)
  else:  # only attachments cut: the original separators stay
    body = pieces[0] + "".join(text[a:b] + p for (a, b), p in zip(part.seps, pieces[1:]))
  lead = text[part.lead()[0]:part.lead()[1]] if part.noun_list else ""
  return lead + body + tail, deleted


def _render_sentence(text: str, span: Span,
                     failed: list[Span]) -> tuple[str | None, list[Span]]:
  """The sentence `span` without the units carrying `failed`, and the spans deleted;
  None if the whole sentence goes."""
  s, e = span
  terminal = _TERMINAL.search(text, s, e)
  body_end = terminal.start() if terminal and terminal.start() > s else e
  parts_spans, part_seps = _split(text, s, body_end, _PART_SEP)
  parts = [_part(text, a, b) for a, b in parts_spans]
  gone_parts: set[int] = set()
  gone: dict[int, set[int]] = {j: set() for j in range(len(parts))}
  cut: dict[int, set[int]] = {j: set() for j in range(len(parts))}
  for f in failed:
    j = next((j for j, p in enumerate(parts) if _inside(f, p.span)), None)
    if j is None:
      return None, [span]  # across parts, or on the final punctuation
    part = parts[j]
    k = next((k for k, item in enumerate(part.items) if _inside(f, item)), None)
    if k is None:
      gone_parts.add(j)  # in the lead or the shared predicate: all items depend on it
    elif part.attachments[k] and _inside(f, part.attachments[k]):
      cut[j].add(k)
    else:
      gone[j].add(k)
  rendered, deleted = [], []
  for j, part in enumerate(parts):
    piece, spans = (None, [part.span]) if j in gone_parts else _render_part(
        text, part, gone[j], cut[j] - gone[j])
    if piece is None:
      deleted.append(part.span)
      if len(parts) > 1:
        deleted.append(_separator(text, part_seps, j))
    else:
      deleted.extend(spans)
    rendered.append(piece)
  if all(piece is None for piece in rendered):
    return None, [span]
  out = ""
  for j, piece in enumerate(rendered):
    if piece is not None:
      out += (text[part_seps[j - 1][0]:part_seps[j - 1][1]] if out else "") + piece
  out += text[body_end:e]
  return _capitalised(out, text[s:e]), deleted


def _merged(spans: list[Span], text: str) -> tuple[Span, ...]:
  out: list[Span] = []
  for span in sorted(filter(None, (trimmed(text, a, b) for a, b in spans))):
    if out and (span[0] <= out[-1][1] or not text[out[-1][1]:span[0]].strip()):
      out[-1] = (out[-1][0], max(out[-1][1], span[1]))
    else:
      out.append(span)
  return tuple(out)


def delete_failed(text: str, failed_spans: Sequence[Span]) -> Correction:
  """A fine-grained correction of `text`: the smallest unit carrying each failed claim
  deleted.

  The unit of a failed claim's span, from the smallest:

  * an item of a list of noun phrases ("There are a cat, a dog and a bird." ->
    "There are a cat and a bird."), the list re-glued (a shared predicate's "are"
    becomes "is" when one item is left; another verb that would no longer agree takes
    the whole part with it);
  * a trailing "with <noun phrase>" ("A man sits on a bench with a dog." -> "A man sits
    on a bench.");
  * a clause joined by ", and", ",", "and", "or" ("A cat sits on a sofa, and a dog
    sleeps on the rug." -> "A cat sits on a sofa.");
  * a part of the sentence joined by ";", "while", ", but";
  * else, or when the span crosses these units, the whole sentence.

  A failure in what a list's items share (the lead "There are", a shared predicate
  "are standing near a car") takes the whole part; so does a deletion that would leave
  a bare noun phrase opening the part ("The image shows a table, a cup, and a fork lies
  there." without its first clause) or a fragment with neither a verb nor a noun phrase
  ("At the top right, there is a dog." without its clause would be "At the top right."). Where in doubt, more is deleted, never left broken.

  Deleting the opening of a sentence capitalises what follows; the final punctuation
  stays. Text outside the deleted units is kept as it was.

  Args:
    text: the answer.
    failed_spans: character spans (half-open, code points) of the failed claims'
      mentions in `text`; overlapping and repeated spans are allowed.

  Returns:
    The `Correction`: its text is empty when every sentence carried a failed claim,
    which the caller treats as a skip.

  Raises:
    ValueError: a span that is empty, outside the text, or covers only whitespace.
  """
  spans = []
  for span in failed_spans:
    start, end = span
    if not 0 <= start < end <= len(text):
      raise ValueError(f"failed span {tuple(span)} is empty or outside the text of "
                       f"length {len(text)}")
    spans.append((start, end))
  sentences = _sentences(text)
  failed_in: dict[int, list[Span]] = {}
  for span in spans:
    touched = [i for i, (s, e) in enumerate(sentences) if s < span[1] and span[0] < e]
    if not touched:
      raise ValueError(f"failed span {span} covers only whitespace of the text of "
                       f"length {len(text)}")
    if len(touched) > 1:  # across sentences: each of them goes
      for i in touched:
        failed_in.setdefault(i, []).append(sentences[i])
    else:
      failed_in.setdefault(touched[0], []).append(span)
  if not failed_in:
    return Correction(text, ())
  out, deleted = "", []
  for i, (s, e) in enumerate(sentences):
    if i in failed_in:
      rendered, spans_i = _render_sentence(text, (s, e), failed_in[i])
      deleted.extend(spans_i)
    else:
      rendered = text[s:e]
    if rendered is not None:
      # The whitespace before a kept sentence stays: the text's own before the first.
      out += (text[sentences[i - 1][1]:s] if out else text[:sentences[0][0]]) + rendered
  if not out:
    return Correction("", _merged(deleted, text))
  out += text[sentences[-1][1]:]
  return Correction(out, _merged(deleted, text))


@dataclasses.dataclass(frozen=True)
class ScoredAnswer:
  """One of the K answers sampled for a prompt, with the labeler's verdicts counted.

  Attributes:
    answer_id: unique among the prompt's answers.
    text: the answer.
    failed: its claims the labeler rejected (P(no) > P(yes)).
    claims: its claims checked; an answer without claims has no score and is never
      paired (as in RLAIF-V, where it gets no verdicts).
  """
  answer_id: str
  text: str
  failed: int
  claims: int

  def __post_init__(self):
    if self.failed < 0 or self.claims < 0 or self.failed > self.claims:
      raise ValueError(f"answer {self.answer_id!r}: counts must satisfy 0 <= failed "
                       f"<= claims, got failed={self.failed}, claims={self.claims}")

  @property
  def score(self) -> int:
    return -self.failed


@dataclasses.dataclass(frozen=True)
class RankingPair:
  """A preference between two answers to one prompt (chosen scores higher)."""
  chosen_id: str
  rejected_id: str
  chosen_score: int
  rejected_score: int


def _word_count(text: str) -> int:
  return len(text.split())  # whitespace words, as RLAIF-V counts them


def _too_long(chosen_words: int, rejected_words: int, max_length_ratio: float) -> bool:
  return rejected_words > max_length_ratio * chosen_words


def ranking_pairs(answers: Sequence[ScoredAnswer], *, min_gap: float = 1.0,
                  max_pairs: int = 2, max_length_ratio: float = 2.0) -> list[RankingPair]:
  """RLAIF-V's preference pairs among the K answers sampled for one prompt.

  As RLAIF-V builds them (RLHF-V/RLAIF-V, utils/pair_construction.py,
  utils/get_preference_pairs.py, utils/get_pairs_filter_shorten.py, run in that order by
  script/data_gen/run_data_pipline_llava15_minicpmv.sh):

  1. An answer scores -(failed claims) (there: sum of its yes-verdicts minus their
     number).
  2. Every two answers whose scores differ by >= `min_gap` are a candidate pair, the
     higher score chosen. RLAIF-V drops pairs with the same text (stripped) in its
     length filter; here they are never candidates.
  3. At most `max_pairs` per prompt. RLAIF-V samples them at random (`random.sample`,
     unseeded); here the choice is deterministic: the largest score gap first (the
     clearest preference, least sensitive to a wrong verdict), ties by the smaller
     difference in word count, then by (chosen_id, rejected_id).
  4. Length balance, after the selection as in RLAIF-V: a pair is dropped when the
     rejected answer is much longer than the chosen one, so that DPO does not learn
     "shorter is better". RLAIF-V drops a pair when (rejected - chosen) / rejected
     words > d, the same as rejected > chosen / (1 - d) words; here
     rejected > `max_length_ratio` * chosen. RLAIF-V picks d over the whole data set
     (`balanced_length_ratio` does the same); the default 2.0 (d = 0.5) is a fixed
     stand-in for one prompt.

  Args:
    answers: the prompt's scored answers (unique ids).
    min_gap: the least score difference of a pair (> 0).
    max_pairs: the most pairs kept (>= 0).
    max_length_ratio: the most rejected words per chosen word (>= 1; inf: no filter).

  Returns:
    The pairs, in the order selected; fewer than `max_pairs` (or none, e.g. for one
    answer) where the candidates run out or the length filter drops them.

  Raises:
    ValueError: duplicate answer ids or a bad option.
  """
  if not min_gap > 0:
    raise ValueError(f"min_gap must be > 0, got {min_gap}")
  if max_pairs < 0:
    raise ValueError(f"max_pairs must be >= 0, got {max_pairs}")
  if not max_length_ratio >= 1:
    raise ValueError(f"max_length_ratio must be >= 1, got {max_length_ratio}")
  ids = [a.answer_id for a in answers]
  duplicates = sorted({i for i in ids if ids.count(i) > 1})
  if duplicates:
    raise ValueError(f"duplicate answer ids: {duplicates}")
  scored = sorted((a for a in answers if a.claims > 0), key=lambda a: a.answer_id)
  candidates = []
  for a, b in itertools.combinations(scored, 2):
    gap = abs(a.score - b.score)
    if gap < min_gap or a.text.strip() == b.text.strip():
      continue
    chosen, rejected = (a, b) if a.score > b.score else (b, a)
    length_gap = abs(_word_count(chosen.text) - _word_count(rejected.text))
    candidates.append(((-gap, length_gap, chosen.answer_id, rejected.answer_id),
                       chosen, rejected))
  candidates.sort(key=lambda c: c[0])
  pairs = []
  for _, chosen, rejected in candidates[:max_pairs]:
    if _too_long(_word_count(chosen.text), _word_count(rejected.text), max_length_ratio):
      continue
    pairs.append(RankingPair(chosen.answer_id, rejected.answer_id, chosen.score,
                             rejected.score))
  return pairs


def balanced_length_ratio(word_counts: Sequence[tuple[int, int]]) -> float:
  """The `max_length_ratio` that best balances lengths over a whole set of pairs.

  RLAIF-V's search (utils/get_pairs_filter_shorten.py, `cal_pair_search_difflen`): for
  d in 0, 0.02, ..., 0.98, keep the pairs with (rejected - chosen) / rejected words
  <= d and measure |mean chosen - mean rejected| / mean rejected words; the first d with
  the least imbalance wins. Here d is returned as the ratio 1 / (1 - d) and the pairs
  kept are those `ranking_pairs` keeps with it, so that a caller can select pairs with
  `max_length_ratio=math.inf`, compute the ratio over all prompts, and filter again
  (the selection does not depend on the ratio). A d that keeps no pair is skipped
  (RLAIF-V divides by zero there).

  Args:
    word_counts: (chosen words, rejected words) of each pair.

  Raises:
    ValueError: no pairs, or none whose lengths can be balanced (all rejected empty).
  """
  if not word_counts:
    raise ValueError("no pairs to balance")
  best, best_ratio = math.inf, None
  for k in range(50):
    ratio = 1 / (1 - k / 50)
    kept = [(c, r) for c, r in word_counts if not _too_long(c, r, ratio)]
    rejected = sum(r for _, r in kept)
    if not kept or rejected == 0:
      continue
    imbalance = abs(sum(c for c, _ in kept) - rejected) / rejected
    if imbalance < best:
      best, best_ratio = imbalance, ratio
  if best_ratio is None:
    raise ValueError("no pairs whose lengths can be balanced")
  return best_ratio
