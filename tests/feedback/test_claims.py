"""Claims: the rule-based extractor on hand-written answers with hand-computed claims, its
one code path with objhal's mentions, and the claims file's checks."""

from __future__ import annotations

import json
import re

import pytest

from rlhfv_jax.evals import objhal
from rlhfv_jax.feedback import claims


@pytest.fixture(scope="module")
def extractor():
  return claims.RuleClaimExtractor()


def summary(text, found):
  """(kind, object, spanned words, question, expected) per claim, spans read by slicing."""
  return [(c.kind, c.object, text[c.span[0]:c.span[1]], c.question, c.expected)
          for c in found]


@pytest.mark.parametrize("text, want", [
    # Plurals and irregular plurals: the question keeps the answer's own words.
    ("Puppies play near three benches and some people.", [
        ("presence", "dog", "Puppies", "Are there puppies in the image?", "yes"),
        ("count", "bench", "three benches", "Are there three benches in the image?", "yes"),
        ("presence", "person", "people", "Are there people in the image?", "yes")]),
    # Two-word objects, "baby X" -> X; a/an.
    ("A hot dog, a teddy bear and a baby elephant by a traffic light and a fire hydrant.", [
        ("presence", "hot dog", "hot dog", "Is there a hot dog in the image?", "yes"),
        ("presence", "teddy bear", "teddy bear", "Is there a teddy bear in the image?",
         "yes"),
        ("presence", "elephant", "baby elephant", "Is there a baby elephant in the image?",
         "yes"),
        ("presence", "traffic light", "traffic light",
         "Is there a traffic light in the image?", "yes"),
        ("presence", "fire hydrant", "fire hydrant", "Is there a fire hydrant in the image?",
         "yes")]),
    ("An umbrella, broccoli and a cell phone.", [
        ("presence", "umbrella", "umbrella", "Is there an umbrella in the image?", "yes"),
        ("presence", "broccoli", "broccoli", "Is there broccoli in the image?", "yes"),
        ("presence", "cell phone", "cell phone", "Is there a cell phone in the image?",
         "yes")]),
    # Negations: absence claims, never presence ones.
    ("There is no dog.", [
        ("absence", "dog", "dog", "Is there a dog in the image?", "no")]),
    ("A table without any chairs.", [
        ("presence", "dining table", "table", "Is there a table in the image?", "yes"),
        ("absence", "chair", "chairs", "Are there chairs in the image?", "no")]),
    ("The street has no people.", [
        ("absence", "person", "people", "Are there people in the image?", "no")]),
    ("There aren't any cars, and neither a bus nor a truck.", [
        ("absence", "car", "cars", "Are there cars in the image?", "no"),
        ("absence", "bus", "bus", "Is there a bus in the image?", "no"),
        ("absence", "truck", "truck", "Is there a truck in the image?", "no")]),
    # The scope: a list under one cue; ended by "but" and by ", and a ...".
    ("There are no forks, knives, or spoons.", [
        ("absence", "fork", "forks", "Are there forks in the image?", "no"),
        ("absence", "knife", "knives", "Are there knives in the image?", "no"),
        ("absence", "spoon", "spoons", "Are there spoons in the image?", "no")]),
    ("There is no dog, but a cat sleeps on the couch.", [
        ("absence", "dog", "dog", "Is there a dog in the image?", "no"),
        ("presence", "cat", "cat", "Is there a cat in the image?", "yes"),
        ("presence", "couch", "couch", "Is there a couch in the image?", "yes")]),
    ("A man without a hat, and a dog.", [
        ("presence", "person", "man", "Is there a man in the image?", "yes"),
        ("presence", "dog", "dog", "Is there a dog in the image?", "yes")]),
    # A negated existence predicate after the objects.
    ("A cat and a dog are not visible in the image. The bird is absent.", [
        ("absence", "cat", "cat", "Is there a cat in the image?", "no"),
        ("absence", "dog", "dog", "Is there a dog in the image?", "no"),
        ("absence", "bird", "bird", "Is there a bird in the image?", "no")]),
    # "not only" negates nothing; "no other cars" says nothing about a car.
    ("Not only a dog but also a cat. Two cars are parked, and no other cars.", [
        ("presence", "dog", "dog", "Is there a dog in the image?", "yes"),
        ("presence", "cat", "cat", "Is there a cat in the image?", "yes"),
        ("count", "car", "Two cars", "Are there two cars in the image?", "yes")]),
    # Counts: number words and digits, modifiers in the span, not in the question.
    ("Two dogs, 3 cars and two red trucks. One cat.", [
        ("count", "dog", "Two dogs", "Are there two dogs in the image?", "yes"),
        ("count", "car", "3 cars", "Are there 3 cars in the image?", "yes"),
        ("count", "truck", "two red trucks", "Are there two trucks in the image?", "yes"),
        ("presence", "cat", "cat", "Is there a cat in the image?", "yes")]),
    ("Two of the dogs sleep. Zero cats.", [
        ("presence", "dog", "dogs", "Are there dogs in the image?", "yes"),
        ("absence", "cat", "cats", "Are there cats in the image?", "no")]),
    # Repeats: one presence claim per class (the first mention); counts only when new.
    ("A dog runs. The dog barks at two dogs, 2 dogs and three dogs. A dog sleeps.", [
        ("presence", "dog", "dog", "Is there a dog in the image?", "yes"),
        ("count", "dog", "two dogs", "Are there two dogs in the image?", "yes"),
        ("count", "dog", "three dogs", "Are there three dogs in the image?", "yes")]),
    ("Two dogs play. The dogs are brown.", [
        ("count", "dog", "Two dogs", "Are there two dogs in the image?", "yes")]),
    # Several objects in one sentence; synonyms map to classes.
    ("A woman on a sofa holds a puppy, a laptop and a cup.", [
        ("presence", "person", "woman", "Is there a woman in the image?", "yes"),
        ("presence", "couch", "sofa", "Is there a sofa in the image?", "yes"),
        ("presence", "dog", "puppy", "Is there a puppy in the image?", "yes"),
        ("presence", "laptop", "laptop", "Is there a laptop in the image?", "yes"),
        ("presence", "cup", "cup", "Is there a cup in the image?", "yes")]),
    ("A delicious meal.", []),
    ("", []),
])
def test_extract(extractor, text, want):
  assert summary(text, extractor.extract(text)) == want


def test_sentences_and_count_values(extractor):
  text = "A dog sits.  There is no cat!\nTwo cars\n\nwait by 12 benches."
  found = extractor.extract(text)
  assert [text[a:b] for a, b in (c.sentence for c in found)] == [
      "A dog sits.", "There is no cat!", "Two cars", "wait by 12 benches."]
  assert [c.count for c in found] == [None, None, 2, 12]
  assert [c.kind for c in found] == ["presence", "absence", "count", "count"]


def test_a_self_contradicting_answer_keeps_both_claims(extractor):
  found = extractor.extract("A dog sleeps. There is no dog.")
  assert [(c.kind, c.expected) for c in found] == [("presence", "yes"), ("absence", "no")]


def test_spans_survive_case_quotes_and_unicode(extractor):
  text = 'İİ said "Two DOGS" (and a CAT).'
  found = extractor.extract(text)
  assert [(c.kind, text[c.span[0]:c.span[1]], c.question) for c in found] == [
      ("count", "Two DOGS", "Are there two dogs in the image?"),
      ("presence", "CAT", "Is there a cat in the image?")]


@pytest.mark.parametrize("text", [
    "Two hot dogs, a baby elephant and a passenger train near the wine glasses.",
    "A toilet seat next to the toilet, a TV, teddy bears and children with knives.",
    "Men and women walk two puppies past 3 cars; a bow tie, sports balls and skis.",
    "A man's surfboard, a cell phone and a remote control on the dining table.",
])
def test_objects_are_objhals_mentions(extractor, text):
  """One code path: without negations the claims' objects are objhal's mentions."""
  vocabulary = objhal.Vocabulary()
  assert {c.object for c in extractor.extract(text)} == set(vocabulary.mentions(text))
  spans = vocabulary.mention_spans(text)
  assert [cls for cls, _, _ in spans] == vocabulary.mentions(text)
  assert all(c.span[1] in {b for _, _, b in spans} for c in extractor.extract(text))


def test_extractor_protocol_and_claim_checks(extractor):
  assert isinstance(extractor, claims.ClaimExtractor)
  with pytest.raises(ValueError, match="kind"):
    claims.Claim("maybe", "dog", (0, 3), (0, 3), "Is there a dog?", "yes")
  with pytest.raises(ValueError, match="expected"):
    claims.Claim("presence", "dog", (0, 3), (0, 3), "Is there a dog?", "perhaps")


TEXTS = {"a": "A dog sits on a bench. The sky is blue.", "b": "Two cats."}


def write(tmp_path, *lines):
  path = tmp_path / "claims.jsonl"
  path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n"
                          for l in lines))
  return path


def test_read_claims_file(tmp_path):
  path = write(tmp_path,
               {"item_id": "a", "claims": [
                   {"span": [2, 5], "question": "Is there a dog?"},
                   {"span": [27, 38], "question": " Is the sky blue? ", "expected": "no"}]},
               "",
               {"item_id": "b", "claims": []})
  got = claims.read_claims_file(path, TEXTS)
  assert got == {
      "a": [claims.Claim("external", "dog", (2, 5), (0, 22), "Is there a dog?", "yes"),
            claims.Claim("external", "sky is blue", (27, 38), (23, 39), "Is the sky blue?",
                         "no")],
      "b": []}


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON"),
    ({"claims": []}, "needs an item_id string"),
    ({"item_id": "zz", "claims": []}, "item 'zz': not an item"),
    ({"item_id": "b"}, "item 'b': needs a 'claims' list"),
    ({"item_id": "b", "claims": [], "extra": 1}, "unknown keys \\['extra'\\]"),
    ({"item_id": "b", "claims": [{"question": "Cats?"}]}, "claim 0: needs a span"),
    ({"item_id": "b", "claims": [{"span": [0, 99], "question": "Cats?"}]},
     "span \\[0, 99\\] is empty, reversed or outside"),
    ({"item_id": "b", "claims": [{"span": [3, 3], "question": "Cats?"}]}, "is empty"),
    ({"item_id": "b", "claims": [{"span": [5, 2], "question": "Cats?"}]}, "reversed"),
    ({"item_id": "b", "claims": [{"span": [-1, 2], "question": "Cats?"}]}, "outside"),
    ({"item_id": "b", "claims": [{"span": [0, 3]}]}, "needs a question ending in"),
    ({"item_id": "b", "claims": [{"span": [0, 3], "question": "  "}]}, "question"),
    ({"item_id": "b", "claims": [{"span": [0, 3], "question": "?"}]}, "question"),
    ({"item_id": "b", "claims": [{"span": [0, 3], "question": "Cats."}]}, "question"),
    ({"item_id": "b", "claims": [{"span": [0, 3], "question": "Cats?", "expected": "Y"}]},
     "expected must be 'yes' or 'no'"),
])
def test_read_claims_file_errors_name_file_line_and_item(tmp_path, line, problem):
  path = write(tmp_path, {"item_id": "a", "claims": []}, line)
  with pytest.raises(ValueError, match=f"^{re.escape(str(path))} line 2: .*{problem}"):
    claims.read_claims_file(path, TEXTS)


def test_read_claims_file_duplicates_and_error_policy(tmp_path):
  path = write(tmp_path, {"item_id": "a", "claims": []}, {"item_id": "b", "claims": []},
               {"item_id": "a", "claims": []})
  with pytest.raises(ValueError, match=r"line 3: item 'a': a second line for the item "
                                       r"\(first on line 1\)"):
    claims.read_claims_file(path, TEXTS)
  errors = []
  got = claims.read_claims_file(
      write(tmp_path, "[1]", {"item_id": "zz", "claims": []},
            {"item_id": "b", "claims": [{"span": [0, 3], "question": "Two?"}]}),
      TEXTS, on_error=errors.append)
  assert [c.object for c in got["b"]] == ["Two"] and list(got) == ["b"]
  assert [str(e).split(": ")[0].rsplit(" ", 1)[1] for e in errors] == ["1", "2"]
