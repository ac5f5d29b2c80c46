"""The oracle annotator: corrects only the hallucinated segments of a description.

RLHF-V's annotators read a model response next to its image and rewrite the
hallucinated segments, leaving everything else verbatim; the dense DPO loss then
up-weights exactly the rewritten tokens. This labeler does the same with the
scene's ground truth (rules in `oracle`):

* a mention whose referent exists but with a wrong colour, shape, size or position
  gets only the wrong words replaced ("a blue square" -> "a red square");
* a mention of an object that is not there is deleted — with its whole sentence
  when the sentence says nothing else;
* a second mention of an object the text already described is deleted the same way,
  whatever it states (a careful annotator removes "At the bottom, there is a small
  white square." after "At the bottom left, there is a small white square." instead of
  moving it onto the first mention, which would teach the model to repeat itself);
* a wrong count claim gets its number (and is/are, object/objects) fixed.

Like the paper's annotators it corrects and never completes: objects the response
omits are not added, so `chosen` is never longer in content than `rejected`.
Responses without a hallucination produce no feedback (`correct_description`
returns None): a pair with chosen == rejected carries no preference.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from rlhfv_jax.demo import corpora, oracle, world

_PREPOSITION = re.compile(r"\b(at|on|in) the\s+$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Edit:
  """One correction, as a character-span replacement in the rejected text.

  Attributes:
    start: span start in `rejected`.
    end: span end (exclusive).
    replacement: text replacing rejected[start:end] ("" for deletions).
    reason: "invented_object", "repeated_mention", "color", "shape", "size",
      "position" or "count".
  """

  start: int
  end: int
  replacement: str
  reason: str


@dataclasses.dataclass(frozen=True)
class Correction:
  """An oracle correction of one response.

  Attributes:
    rejected: the model's response.
    chosen: the corrected response.
    edits: the edits, sorted and non-overlapping, that turn rejected into chosen.
  """

  rejected: str
  chosen: str
  edits: tuple[Edit, ...]

  @property
  def reasons(self) -> tuple[str, ...]:
    """The reason of every edit."""
    return tuple(e.reason for e in self.edits)

  def rejected_spans(self) -> list[tuple[int, int]]:
    """Character spans of `rejected` that were replaced or deleted."""
    return [(e.start, e.end) for e in self.edits if e.end > e.start]

  def chosen_spans(self) -> list[tuple[int, int]]:
    """Character spans of `chosen` that the edits wrote (deletions leave none)."""
    spans, shift = [], 0
    for e in self.edits:
      start = e.start + shift
      if e.replacement:
        spans.append((start, start + len(e.replacement)))
      shift += len(e.replacement) - (e.end - e.start)
    return spans


def _cased(original: str, new: str) -> str:
  """`new` capitalised like the first letter of `original`."""
  return new[:1].upper() + new[1:] if original[:1].isupper() else new


def _replace(word: oracle.Word, new: str, reason: str) -> Edit:
  """Replaces a word, keeping its capitalisation."""
  return Edit(word.start, word.end, _cased(word.text, new), reason)


def _position_edit(text: str, mention: oracle.Mention, cell: int) -> Edit:
  """Rewrites a position phrase, with its "at/on/in the" when present."""
  words = mention.position_words
  start, end = words[0].start, words[-1].end
  prep = _PREPOSITION.search(text, 0, start)
  if prep is not None:
    return Edit(prep.start(), end,
                _cased(prep.group(), corpora.WHERE_PHRASES[cell]), "position")
  return Edit(start, end, _cased(words[0].text, world.CELL_NAMES[cell]), "position")


def _attribute_edits(text: str, mention: oracle.Mention,
                     grounding: oracle.Grounding) -> list[Edit]:
  referent = grounding.referent
  edits = []
  for attribute in grounding.wrong:
    if attribute == "color":
      edits.append(_replace(mention.color_word, referent.color, "color"))
    elif attribute == "shape":
      plural = mention.head.text.lower().endswith("s")
      edits.append(_replace(mention.head, referent.shape + ("s" if plural else ""), "shape"))
    elif attribute == "size":
      edits.append(_replace(mention.size_word, referent.size, "size"))
    elif attribute == "position":
      edits.append(_position_edit(text, mention, referent.cell))
  return edits


def _count_edits(text: str, sentence: oracle.Sentence, claim: oracle.CountClaim,
                 true_count: int) -> list[Edit]:
  word = claim.number_word
  new = str(true_count) if word.text.isdigit() else world.NUMBER_WORDS[true_count]
  edits = [_replace(word, new, "count")]
  if (claim.count == 1) != (true_count == 1):
    # Number agreement: "There is one object" <-> "There are two objects".
    swaps = {"is": "are", "are": "is", "object": "objects", "objects": "object",
             "shape": "shapes", "shapes": "shape"}
    for word in oracle.words_in(text, sentence.start, sentence.end):
      if word.text.lower() in swaps:
        edits.append(_replace(word, swaps[word.text.lower()], "count"))
  return edits


def _sentence_deletion(text: str, sentence: oracle.Sentence, reason: str) -> Edit:
  """Deletes a sentence and the whitespace after it (see `_merge_deletions` for a tail)."""
  end = sentence.end
  while end < len(text) and text[end].isspace():
    end += 1
  return Edit(sentence.start, end, "", reason)


def _mention_deletions(sentence: oracle.Sentence, doomed: dict[int, str]) -> list[Edit]:
  """Deletes some mentions of a sentence that keeps at least one other mention.

  The first mention is cut up to where the next one starts ("A red circle ... and a
  blue square ..." -> "A blue square ..."), a later one from where the previous one
  ends ("... circle at the top and a blue square on the right." -> "... at the top.").
  A lone mention beside a count claim loses just its own words.
  """
  mentions = sentence.mentions
  spans = []
  for k, reason in doomed.items():
    if len(mentions) == 1:
      spans.append((*mentions[0].span, reason))
    elif k == 0:
      spans.append((mentions[0].span[0], mentions[1].span[0], reason))
    else:
      spans.append((mentions[k - 1].span[1], mentions[k].span[1], reason))
  spans.sort()
  merged = [list(spans[0])]
  for s, e, reason in spans[1:]:
    if s <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], e)
    else:
      merged.append([s, e, reason])
  return [Edit(s, e, "", reason) for s, e, reason in merged]


def _merge_deletions(edits: list[Edit], text: str) -> list[Edit]:
  """Fuses touching deletions; a deleted tail also takes the whitespace before it."""
  merged = [edits[0]]
  for edit in edits[1:]:
    last = merged[-1]
    both_deletions = not (last.replacement or edit.replacement)
    if both_deletions and edit.start <= last.end:
      merged[-1] = Edit(last.start, max(last.end, edit.end), "", last.reason)
    elif edit.start < last.end:
      raise AssertionError(f"overlapping edits {last} and {edit} in {text!r}")
    else:
      merged.append(edit)
  last = merged[-1]
  if not last.replacement and last.end == len(text):
    # Deleting the tail of the text: take the whitespace before it too.
    start = len(text[:last.start].rstrip())
    merged[-1] = Edit(start, last.end, "", last.reason)
  return merged


def _apply(text: str, edits: list[Edit]) -> str:
  pieces, cursor = [], 0
  for edit in edits:
    pieces += [text[cursor:edit.start], edit.replacement]
    cursor = edit.end
  pieces.append(text[cursor:])
  return "".join(pieces)


def correct_description(text: str, scene: world.Scene) -> Optional[Correction]:
  """Corrects the hallucinated segments of `text` about `scene`.

  Args:
    text: the model's description.
    scene: the ground truth of its image.

  Returns:
    The correction, or None when nothing in `text` is hallucinated.
  """
  parsed = oracle.parse_description(text)
  edits: list[Edit] = []
  described: set[world.SceneObject] = set()  # referents of the mentions kept so far
  for sentence in parsed.sentences:
    sentence_edits: list[Edit] = []
    doomed: dict[int, str] = {}
    for k, mention in enumerate(sentence.mentions):
      grounding = oracle.ground_mention(mention, scene)
      if grounding.referent is None:
        doomed[k] = "invented_object"
      elif grounding.referent in described:
        doomed[k] = "repeated_mention"
      else:
        described.add(grounding.referent)
        sentence_edits += _attribute_edits(text, mention, grounding)
    if sentence.count_claim is not None and sentence.count_claim.count != len(scene.objects):
      sentence_edits += _count_edits(text, sentence, sentence.count_claim,
                                     len(scene.objects))
    if doomed and len(doomed) == len(sentence.mentions) and sentence.count_claim is None:
      invented = "invented_object" in doomed.values()
      edits.append(_sentence_deletion(text, sentence,
                                      "invented_object" if invented else "repeated_mention"))
      continue
    if doomed:
      deletions = _mention_deletions(sentence, doomed)
      # Attribute fixes inside a deleted stretch are moot.
      sentence_edits = [e for e in sentence_edits
                        if not any(d.start <= e.start < d.end for d in deletions)]
      sentence_edits += deletions
    edits += sentence_edits
  if not edits:
    return None
  edits = _merge_deletions(sorted(edits, key=lambda e: e.start), text)
  chosen = _apply(text, edits)
  if chosen == text:  # e.g. a count word replaced by its own spelling
    return None
  return Correction(text, chosen, tuple(edits))
