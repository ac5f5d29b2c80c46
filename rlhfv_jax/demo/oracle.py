"""Reading a description against a scene's ground truth (shared by labeler and metrics).

`parse_description` splits a text into sentences and extracts, with the world's
closed vocabulary and no learned component:

* object mentions: a shape word (the head, plural allowed) with the colour/size
  words between the previous head and it, and the first position phrase after it
  ("top left", "center", "left", ...) before the next head — or, for the first
  mention of a sentence without one, before it ("On the left, there is ...");
* count claims: a sentence with "object(s)"/"shape(s)" and a number word or digit.

`ground_mention` then decides what a mention refers to. The object *type* of this
world is the (colour, shape) pair (unique within a scene), so a mention is a
hallucinated object exactly when no object of its type exists — the CHAIR rule with
colour-shape pairs as the object vocabulary. A mention of an existing type can still
get its size or position wrong (attribute errors). A mention of an absent type may
still be a real object described with a wrong colour or shape: when its stated cell
holds an object sharing its colour or its shape, that object is its referent, which
is how the labeler tells "wrong colour" (fix one word) from "invented object"
(delete the mention).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from rlhfv_jax.demo import world

_WORD = re.compile(r"[A-Za-z]+|\d+")
_SENTENCE = re.compile(r"[^.!?]+[.!?]*|[.!?]+")
_SHAPE_WORDS = {**{s: s for s in world.SHAPES}, **{s + "s": s for s in world.SHAPES}}
_COUNT_NOUNS = {"object", "objects", "shape", "shapes", "thing", "things"}
_NUMBERS = {w: i for i, w in enumerate(world.NUMBER_WORDS)}
_CELL_OF_NAME = {name: i for i, name in enumerate(world.CELL_NAMES)}
_VERTICAL = ("top", "bottom")
_HORIZONTAL = ("left", "right")
_CENTER_WORDS = ("center", "middle", "centre")


@dataclasses.dataclass(frozen=True)
class Word:
  """A word of the text with its character span [start, end)."""

  text: str
  start: int
  end: int


@dataclasses.dataclass(frozen=True)
class Mention:
  """An object mention.

  Attributes:
    shape: the head shape (singular form).
    color: stated colour or None.
    size: stated size or None.
    cell: stated grid cell or None.
    head: the shape word.
    color_word: the colour word, if any.
    size_word: the size word, if any.
    position_words: the words of the position phrase (1 or 2), possibly empty.
    span: character span covering every word of the mention.
  """

  shape: str
  color: Optional[str]
  size: Optional[str]
  cell: Optional[int]
  head: Word
  color_word: Optional[Word]
  size_word: Optional[Word]
  position_words: tuple[Word, ...]
  span: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class CountClaim:
  """A claim about how many objects the image holds, e.g. "There are three objects"."""

  count: int
  number_word: Word


@dataclasses.dataclass(frozen=True)
class Sentence:
  """One sentence: its span in the text, mentions and an optional count claim."""

  start: int
  end: int
  mentions: tuple[Mention, ...]
  count_claim: Optional[CountClaim]


@dataclasses.dataclass(frozen=True)
class ParsedDescription:
  """A parsed text."""

  text: str
  sentences: tuple[Sentence, ...]

  @property
  def mentions(self) -> tuple[Mention, ...]:
    """All mentions in order."""
    return tuple(m for s in self.sentences for m in s.mentions)

  @property
  def count_claims(self) -> tuple[CountClaim, ...]:
    """All count claims in order."""
    return tuple(s.count_claim for s in self.sentences if s.count_claim is not None)


def _position(words: list[Word]) -> tuple[Optional[int], tuple[Word, ...]]:
  """The first position phrase among `words`: (cell, words of the phrase)."""
  for i, w in enumerate(words):
    lw = w.text.lower()
    if lw in _VERTICAL:
      nxt = words[i + 1] if i + 1 < len(words) else None
      if nxt is not None and nxt.text.lower() in _HORIZONTAL:
        return _CELL_OF_NAME[f"{lw} {nxt.text.lower()}"], (w, nxt)
      return _CELL_OF_NAME[lw], (w,)
    if lw in _HORIZONTAL:
      return _CELL_OF_NAME[lw], (w,)
    if lw in _CENTER_WORDS:
      return _CELL_OF_NAME["center"], (w,)
  return None, ()


def words_in(text: str, start: int = 0, end: int | None = None) -> list[Word]:
  """The words (letter runs and digit runs) of text[start:end], spans into `text`."""
  stop = len(text) if end is None else end
  return [Word(m.group(), m.start(), m.end()) for m in _WORD.finditer(text, start, stop)]


def _parse_sentence(text: str, start: int, end: int) -> Sentence:
  words = words_in(text, start, end)
  lowered = [w.text.lower() for w in words]
  heads = [i for i, lw in enumerate(lowered) if lw in _SHAPE_WORDS]
  mentions = []
  for k, h in enumerate(heads):
    before = range(heads[k - 1] + 1 if k else 0, h)
    after = words[h + 1:heads[k + 1] if k + 1 < len(heads) else len(words)]
    color_i = next((i for i in reversed(before) if lowered[i] in world.COLORS), None)
    size_i = next((i for i in reversed(before) if lowered[i] in world.SIZES), None)
    cell, pos_words = _position(after)
    if cell is None and k == 0:  # "On the left, there is a red circle."
      cell, pos_words = _position([words[i] for i in before])
    covered = [words[h], *pos_words]
    covered += [words[i] for i in (color_i, size_i) if i is not None]
    mentions.append(Mention(
        shape=_SHAPE_WORDS[lowered[h]],
        color=lowered[color_i] if color_i is not None else None,
        size=lowered[size_i] if size_i is not None else None,
        cell=cell,
        head=words[h],
        color_word=words[color_i] if color_i is not None else None,
        size_word=words[size_i] if size_i is not None else None,
        position_words=pos_words,
        span=(min(w.start for w in covered), max(w.end for w in covered))))
  count_claim = None
  if any(lw in _COUNT_NOUNS for lw in lowered):
    for w, lw in zip(words, lowered):
      if lw in _NUMBERS or lw.isdigit():
        count_claim = CountClaim(_NUMBERS[lw] if lw in _NUMBERS else int(lw), w)
        break
  return Sentence(start, end, tuple(mentions), count_claim)


def parse_description(text: str) -> ParsedDescription:
  """Parses a description into sentences with object mentions and count claims.

  Args:
    text: any text (model output may be ungrammatical; unknown words are ignored).

  Returns:
    The parse; sentence spans index into `text`.
  """
  sentences = []
  for m in _SENTENCE.finditer(text):
    chunk = m.group()
    lead = len(chunk) - len(chunk.lstrip())
    body = chunk.strip()
    if not body:
      continue
    start = m.start() + lead
    sentences.append(_parse_sentence(text, start, start + len(body)))
  return ParsedDescription(text, tuple(sentences))


@dataclasses.dataclass(frozen=True)
class Grounding:
  """What a mention refers to in the scene and what it gets wrong.

  Attributes:
    exists: an object of the mentioned type (colour and shape; shape alone when no
      colour is stated) is in the scene. False = hallucinated object (CHAIR).
    referent: the scene object the mention describes, or None when it describes
      nothing in the scene (an invented object, to be deleted).
    wrong: attributes the mention states wrongly about its referent, a subset of
      ("color", "shape", "size", "position") in that order; empty when correct.
  """

  exists: bool
  referent: Optional[world.SceneObject]
  wrong: tuple[str, ...]


def _wrong_attributes(mention: Mention, obj: world.SceneObject) -> tuple[str, ...]:
  stated = (("color", mention.color, obj.color), ("shape", mention.shape, obj.shape),
            ("size", mention.size, obj.size), ("position", mention.cell, obj.cell))
  return tuple(name for name, said, true in stated if said is not None and said != true)


def ground_mention(mention: Mention, scene: world.Scene) -> Grounding:
  """Grounds one mention in the scene (see the module docstring for the rules).

  Args:
    mention: a parsed mention.
    scene: the ground truth.

  Returns:
    The grounding.
  """
  same_type = [o for o in scene.objects
               if o.shape == mention.shape and mention.color in (None, o.color)]
  if same_type:
    # With a colour the type is unique; a bare shape refers to the object of that
    # shape that best fits its other stated attributes (first in reading order on ties).
    referent = min(same_type, key=lambda o: len(_wrong_attributes(mention, o)))
    return Grounding(True, referent, _wrong_attributes(mention, referent))
  if mention.cell is not None:
    occupant = next((o for o in scene.objects if o.cell == mention.cell), None)
    if occupant is not None and (occupant.shape == mention.shape
                                 or occupant.color == mention.color):
      return Grounding(False, occupant, _wrong_attributes(mention, occupant))
  return Grounding(False, None, ())
