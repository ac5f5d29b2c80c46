"""Claims in an answer: what a labeler model is asked about, one yes/no question each.

A `Claim` is one checkable statement of an answer with its character span, the span of
its sentence, a yes/no question for the labeler and the answer the claim expects. A
`ClaimExtractor` makes them from an answer's text; `RuleClaimExtractor` is the default,
offline one; `read_claims_file` reads claims made by any external tool (e.g. an LLM
splitter, as RLAIF-V's divide step).

`RuleClaimExtractor`, over the Object HalBench vocabulary (`evals.objhal.Vocabulary`: its
tokens, lemmas, two-word phrases and synonyms are the one definition of a mention):

* Sentences: objhal's split (after '.', '!' or '?' followed by whitespace), and at line
  breaks; each sentence's span leaves out surrounding whitespace.
* Absence (expected "no"): a mention inside the scope of a negation cue ("no", "not",
  "n't", "without", "neither", "nor", "never", "none", "nothing", "nobody", "lack(s)",
  "lacking"; not "not only/just/far/too ..."). The scope runs from the cue to the end of
  its clause: the sentence end; ";", ":", "--", brackets; a clause word ("but", "while",
  "which", "except", ...); or a "," / "and" that opens a new phrase (followed by an
  article, pronoun, "there", a number). So "no forks, knives or spoons" and "no cars and
  people" negate every object, "There is no dog, but a cat ..." and "without a leash and a
  cat" do not negate the cat. A mention also is absent when its noun phrase is followed by
  a negated existence predicate ("Dogs are not visible", "a cat cannot be seen", "the
  dog is absent", "does not appear in the image"). "No other/more/additional dogs" states
  nothing about whether there is a dog: no claim. A negated mention is never a presence
  claim, a stated zero ("zero dogs", "0 cars") is an absence claim.
* Count (expected "yes"): a number word (two ... ninety) or digits before the mention,
  with at most two modifier words between ("two dogs", "3 cars", "two red cars"); "a",
  "an", "one" are presence. The span runs from the number to the mention's end.
* Presence (expected "yes"): every other mention. The span is the mention's words
  ("dog", "hot dogs", "baby elephant").
* Repeats: one presence claim per class per answer, at its first mention; a class's
  first mention with a count stands for its presence; further count claims only for a
  count not yet claimed for the class (two and 2 are one count). One absence claim per
  class. An answer contradicting itself ("a dog ... there is no dog") keeps both.
* Questions are about the object as the answer names it, without its adjectives (one
  object per claim; attributes are not this extractor's claims): the mention's words,
  lower-cased ("puppies", "hot dog"), and for a count the number as written: "Is there a
  dog in the image?", "Are there puppies in the image?", "Is there an umbrella in the
  image?", "Is there broccoli in the image?", "Are there two dogs in the image?". An
  absence claim asks the same question and expects "no".

Limits of rules without a parser: a negated verb negates the objects after it in its
clause ("the man is not holding an umbrella": umbrella absent, which is meant; "the dog is
not on the bench": bench absent, which is not); a comma splice after a negation with no
article ("no dogs, cats play") keeps the negation.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

from rlhfv_jax import jsonl
from rlhfv_jax.evals import objhal

KINDS = ("presence", "absence", "count", "external")
ANSWERS = ("yes", "no")


@dataclasses.dataclass(frozen=True)
class Claim:
  """One checkable statement of an answer.

  Attributes:
    kind: "presence", "absence" or "count" (rule based), "external" (a claims file).
    object: the COCO class ("dog"); for an external claim, the spanned text.
    span: (start, end), half-open, into the answer: the words that state the claim.
    sentence: (start, end) of the sentence that carries the claim.
    question: the yes/no question for the labeler ("Is there a dog in the image?").
    expected: the labeler's answer if the claim is true: "yes", or "no" for an absence.
    count: the number a count claim states; None for other kinds.
  """
  kind: str
  object: str
  span: tuple[int, int]
  sentence: tuple[int, int]
  question: str
  expected: str
  count: Optional[int] = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"claim kind {self.kind!r}: expected one of {KINDS}")
    if self.expected not in ANSWERS:
      raise ValueError(f"claim expected answer {self.expected!r}: expected 'yes' or 'no'")


@runtime_checkable
class ClaimExtractor(Protocol):
  """Makes the claims of an answer."""

  def extract(self, text: str) -> list[Claim]:
    """The claims of `text`, in the order of their spans."""
    ...


def sentence_spans(text: str) -> list[tuple[int, int]]:
  """The sentences of `text`: objhal's split, then at line breaks; whitespace trimmed."""
  out = []
  for start, end in objhal.sentence_spans(text):
    for line in re.finditer(r"[^\n]+", text[start:end]):
      stripped = line.group().strip()
      if stripped:
        first = start + line.start() + line.group().index(stripped[0])
        out.append((first, first + len(stripped)))
  return out


def _sentence_of(sentences: Sequence[tuple[int, int]], start: int, end: int
                 ) -> tuple[int, int]:
  """The span of the sentences that `text[start:end]` touches (one, unless it crosses)."""
  touched = [s for s in sentences if s[0] < end and start < s[1]]
  if not touched:  # only whitespace between sentences: the next one, else the last
    touched = [next((s for s in sentences if s[0] >= end), sentences[-1])]
  return touched[0][0], touched[-1][1]


_CUES = frozenset({"no", "not", "n't", "without", "neither", "nor", "never", "none",
                   "nothing", "nobody", "lack", "lacks", "lacking"})
# "not only a dog but ...", "not far from the bench": "not" negates no object.
_NOT_NEGATING_AFTER_NOT = frozenset({"only", "just", "merely", "simply", "far", "too",
                                     "quite"})
_STRONG_BOUNDARIES = frozenset({";", ":", "--", "(", ")", "[", "]", "{", "}", "``", "''"})
_CLAUSE_WORDS = frozenset({
    "but", "while", "whereas", "although", "though", "however", "yet", "except",
    "instead", "which", "who", "whose", "whom", "where", "when", "because", "since", "so",
    "unlike", "besides", "rather", "if", "whether"})
_NUMBERS = {word: value for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())}
_NUMBERS.update({w: 10 * v for v, w in enumerate(
    "thirty forty fifty sixty seventy eighty ninety".split(), start=3)})
# After "," or "and" inside a negation these open a new phrase (the scope ends there).
_NEW_PHRASE = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "my", "his", "her", "its", "our",
    "their", "your", "some", "several", "many", "few", "another", "each", "every", "both",
    "all", "most", "there", "here", "it", "he", "she", "they", "we", "i", "you", "one"})
# "no other dogs": nothing said about whether there is a dog.
_RELATIVE = frozenset({"other", "another", "more", "additional", "further", "else",
                       "extra"})
# Between a number and its object no more than modifiers: these end the search.
_FUNCTION_WORDS = _NEW_PHRASE | _CUES | _CLAUSE_WORDS | frozenset({
    "and", "or", "of", "in", "on", "at", "to", "from", "by", "for", "with", "near",
    "under", "over", "behind", "beside", "next", "into", "onto", "about", "around", "as",
    "than", "is", "are", "was", "were", "be", "been", "has", "have", "had", "'s", "any",
    "dozen", "hundred", "thousand", "pair", "couple", "group", "also"})
# A negated existence predicate after a noun phrase: "dogs are not visible".
_AUX = frozenset({"is", "are", "was", "were", "'s", "'re", "can", "could", "do", "does",
                  "did", "will", "would", "appear", "appears", "seem", "seems"})
_PREDICATE_FILLERS = frozenset({"be", "been", "appear", "seem", "to", "really",
                                "currently", "actually", "clearly", "readily",
                                "immediately", "easily"})
_EXISTS = frozenset({"visible", "present", "seen", "shown", "depicted", "pictured",
                     "there", "anywhere", "found", "included", "apparent", "observed",
                     "detected", "evident", "noticeable", "discernible"})
_MISSING = frozenset({"absent", "missing", "nowhere"})
_IMAGE_WORDS = frozenset({"image", "picture", "photo", "photograph", "scene", "frame",
                          "shot", "view", "sight"})
# Tokens a negated predicate may skip back over to reach its subject's mentions.
_SUBJECT_GLUE = frozenset({",", "and", "or", "nor", "a", "an", "the", "any", "some",
                           "both", "either"})
# Nouns whose lemma does not show that they are plural, and nouns without an article.
_PLURAL_AS_WRITTEN = frozenset({"people", "cattle", "scissors", "police"})
_MASS_NOUNS = frozenset({"broccoli", "luggage"})
_A_BEFORE = ("uni", "use", "usu", "eu", "one")  # a vowel letter sounding like "y"/"w"


def _number(token: str) -> Optional[int]:
  if token.isdigit():
    return int(token)
  return _NUMBERS.get(token)


def _article(noun: str) -> str:
  if noun[:1] in "aeiou" and not noun.startswith(_A_BEFORE):
    return "an"
  return "a"


def _question(surface: str, plural: bool, count_word: Optional[str]) -> str:
  if count_word is not None:
    return f"Are there {count_word} {surface} in the image?"
  if plural:
    return f"Are there {surface} in the image?"
  if surface in _MASS_NOUNS:
    return f"Is there {surface} in the image?"
  return f"Is there {_article(surface)} {surface} in the image?"


@dataclasses.dataclass(frozen=True)
class _Mention:
  """A vocabulary mention in token terms."""
  cls: str
  span: tuple[int, int]
  first: int  # token index of its first word
  last: int   # token index of its last word


class RuleClaimExtractor:
  """Object claims by rules over the Object HalBench vocabulary (module docstring).

  Args:
    vocabulary: the mention vocabulary; default objhal's (RLHF-V's refined COCO list).
  """

  def __init__(self, vocabulary: Optional[objhal.Vocabulary] = None):
    self.vocabulary = vocabulary if vocabulary is not None else objhal.Vocabulary()

  def extract(self, text: str) -> list[Claim]:
    """The presence, absence and count claims of `text`, in the order of their spans."""
    tokens = self.vocabulary.token_spans(text)
    words = [t for t, _, _ in tokens]
    first_of = {a: i for i, (_, a, _) in enumerate(tokens)}
    last_of = {b: i for i, (_, _, b) in enumerate(tokens)}
    mentions = [_Mention(cls, (a, b), first_of[a], last_of[b])
                for cls, a, b in self.vocabulary.mention_spans(text)]
    sentences = sentence_spans(text)
    # Token index range [lo, hi) of each sentence; tokens never cross a sentence.
    bounds = []
    for start, end in sentences:
      inside = [i for i, (_, a, _) in enumerate(tokens) if start <= a < end]
      bounds.append((inside[0], inside[-1] + 1) if inside else (0, 0))
    negation = {}
    for lo, hi in bounds:
      negation.update(self._negation_states(words, lo, hi, mentions))
    in_mention = {i for m in mentions for i in range(m.first, m.last + 1)}

    claims: list[Claim] = []
    present: set[str] = set()         # classes with a presence or count claim
    counted: set[tuple[str, int]] = set()
    absent: set[str] = set()
    for mention in mentions:
      lo, hi = next(b for b in bounds if b[0] <= mention.first < b[1])
      sentence = _sentence_of(sentences, *mention.span)
      negated, relative = negation[mention.first]
      if relative:
        continue
      count_at = None if negated else self._count_start(words, lo, mention, in_mention)
      value = _number(words[count_at]) if count_at is not None else None
      if not negated and value != 0:
        negated = self._negated_predicate(words, hi, mention, in_mention)
      surface = " ".join(text[mention.span[0]:mention.span[1]].lower().split())
      plural = self._plural(words[mention.last])
      if negated or value == 0:
        if mention.cls in absent:
          continue
        absent.add(mention.cls)
        claims.append(Claim("absence", mention.cls, mention.span, sentence,
                            _question(surface, plural, None), "no"))
      elif value is not None and value > 1:
        if (mention.cls, value) in counted:
          continue
        counted.add((mention.cls, value))
        present.add(mention.cls)
        count_word = text[tokens[count_at][1]:tokens[count_at][2]].lower()
        claims.append(Claim("count", mention.cls, (tokens[count_at][1], mention.span[1]),
                            sentence, _question(surface, True, count_word), "yes",
                            count=value))
      elif mention.cls not in present:
        present.add(mention.cls)
        claims.append(Claim("presence", mention.cls, mention.span, sentence,
                            _question(surface, plural, None), "yes"))
    return claims

  @staticmethod
  def _negation_states(words: Sequence[str], lo: int, hi: int,
                       mentions: Sequence[_Mention]) -> dict[int, tuple[bool, bool]]:
    """(negated, relative) at the first token of each mention in tokens [lo, hi)."""
    starts = {m.first for m in mentions}
    states = {}
    negated = relative = False
    for i in range(lo, hi):
      word = words[i]
      if i in starts:
        states[i] = (negated, negated and relative)
      following = words[i + 1] if i + 1 < hi else ""
      if word in _CUES and not (word in ("not", "n't")
                                and following in _NOT_NEGATING_AFTER_NOT):
        negated, relative = True, False
      elif word in _STRONG_BOUNDARIES or word in _CLAUSE_WORDS:
        negated = relative = False
      elif negated and word in (",", "and"):
        j = i + 1
        while j < hi and words[j] in (",", "and"):
          j += 1
        opens = words[j] if j < hi else ""
        if opens in _NEW_PHRASE or _number(opens) is not None:
          negated = relative = False
      elif negated and word in _RELATIVE:
        relative = True
    return states

  @staticmethod
  def _count_start(words: Sequence[str], lo: int, mention: _Mention,
                   in_mention: set[int]) -> Optional[int]:
    """Token index of the number stated for `mention`, if any (module docstring)."""
    i, modifiers = mention.first - 1, 0
    while i >= lo:
      word = words[i]
      if _number(word) is not None:
        return i
      if (modifiers == 2 or i in in_mention or word in _FUNCTION_WORDS
          or not word.replace("-", "").isalpha()):
        return None
      modifiers += 1
      i -= 1
    return None

  @staticmethod
  def _negated_predicate(words: Sequence[str], hi: int, mention: _Mention,
                         in_mention: set[int]) -> bool:
    """Whether the mention's noun phrase is followed by a negated existence predicate."""
    i = mention.last + 1
    while i < hi and (i in in_mention or words[i] in _SUBJECT_GLUE):
      i += 1
    if i >= hi or words[i] not in _AUX:
      return False
    i += 1
    if i < hi and words[i] in _MISSING:
      return True
    if i >= hi or words[i] not in ("not", "n't"):
      return False
    i += 1
    while i < hi and words[i] in _PREDICATE_FILLERS:
      i += 1
    if i < hi and words[i] in _EXISTS:
      return True
    # "not in the image", "not in sight"
    rest = [w for w in words[i + 1:min(i + 3, hi)] if w != "the"]
    return i < hi and words[i] in ("in", "within") and bool(rest) and rest[0] in _IMAGE_WORDS

  def _plural(self, word: str) -> bool:
    return word in _PLURAL_AS_WRITTEN or self.vocabulary.lemmatize(word) != word


def read_claims_file(path: str | pathlib.Path, texts: Mapping[str, str],
                     on_error: Optional[Callable[[ValueError], None]] = None
                     ) -> dict[str, list[Claim]]:
  """Claims made by an external tool, one JSON line per answer.

  Each line: ``{"item_id": str, "claims": [{"span": [start, end], "question": "...?",
  "expected": "yes" | "no"}]}``, `expected` optional (default "yes"), spans half-open
  character offsets into the item's text. Each claim becomes kind "external", `object`
  the spanned text, `sentence` the sentence(s) its span touches (`sentence_spans`).

  Every problem is a ValueError as ``"<path> line <n>: item <id>: <problem>"``: a line
  that is not a JSON object, a missing or non-string item_id, an item_id not in `texts`
  or on an earlier line, a missing or non-list "claims", a claim without a span of two
  integers inside the text with start < end, a question that is empty or does not end in
  "?", an expected answer other than "yes"/"no", unknown keys. It is raised, or passed to
  `on_error` (which may raise it or record it) and the line's item left out. An empty
  "claims" list is returned as it is (whether an answer without claims is an error is the
  caller's policy); items of `texts` the file does not name are not in the result.

  Args:
    path: the JSON lines file.
    texts: item_id -> the answer text the spans index.
    on_error: the error policy, as above; None raises.

  Returns:
    item_id -> its claims, in file order.
  """
  path = pathlib.Path(path)
  seen: dict[str, int] = {}
  out: dict[str, list[Claim]] = {}
  for number, item in jsonl.read_objects(path, on_error):
    try:
      item_id, claims = _item_claims(item, texts, seen)
    except ValueError as e:
      item_name = item.get("item_id")
      where = f"item {item_name!r}: " if isinstance(item_name, str) else ""
      error = jsonl.JsonlError(path, number, f"{where}{e}")
      if on_error is None:
        raise error from None
      on_error(error)
      continue
    seen[item_id] = number
    out[item_id] = claims
  return out


_LINE_KEYS = frozenset({"item_id", "claims"})
_CLAIM_KEYS = frozenset({"span", "question", "expected"})


def _item_claims(item: Mapping, texts: Mapping[str, str], seen: Mapping[str, int]
                 ) -> tuple[str, list[Claim]]:
  """A checked line's (item_id, claims); a ValueError says what is wrong."""
  unknown = sorted(set(item) - _LINE_KEYS)
  if unknown:
    raise ValueError(f"unknown keys {unknown} (expected item_id, claims)")
  item_id = item.get("item_id")
  if not isinstance(item_id, str):
    raise ValueError(f"needs an item_id string, got {item_id!r}")
  if item_id not in texts:
    raise ValueError("not an item of the answers the claims are for")
  if item_id in seen:
    raise ValueError(f"a second line for the item (first on line {seen[item_id]})")
  raw = item.get("claims")
  if not isinstance(raw, list):
    raise ValueError(f"needs a 'claims' list, got {type(raw).__name__}")
  text = texts[item_id]
  sentences = sentence_spans(text) or [(0, len(text))]
  claims = []
  for k, claim in enumerate(raw):
    if not isinstance(claim, dict):
      raise ValueError(f"claim {k}: expected an object, got {type(claim).__name__}")
    unknown = sorted(set(claim) - _CLAIM_KEYS)
    if unknown:
      raise ValueError(f"claim {k}: unknown keys {unknown} (expected span, question, "
                       "expected)")
    span = claim.get("span")
    if (not isinstance(span, list) or len(span) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
      raise ValueError(f"claim {k}: needs a span [start, end] of two integers, got {span!r}")
    start, end = span
    if not 0 <= start < end <= len(text):
      raise ValueError(f"claim {k}: span {span} is empty, reversed or outside the text "
                       f"(0..{len(text)})")
    question = claim.get("question")
    if (not isinstance(question, str) or not question.strip().endswith("?")
        or not question.strip().rstrip("?").strip()):
      raise ValueError(f"claim {k}: needs a question ending in '?', got {question!r}")
    expected = claim.get("expected", "yes")
    if expected not in ANSWERS:
      raise ValueError(f"claim {k}: expected must be 'yes' or 'no', got {expected!r}")
    claims.append(Claim("external", text[start:end], (start, end),
                        _sentence_of(sentences, start, end), question.strip(), expected))
  return item_id, claims
