"""Tests of the oracle labeler: hand-made corrections and corpus-wide properties."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.demo import corpora, labeler, oracle, scoring, world

SCENE = world.Scene("l", (
    world.SceneObject("circle", "red", "large", 0),      # top left
    world.SceneObject("square", "blue", "small", 4),     # center
))
COUNT = "There are two objects in the image."


@pytest.mark.parametrize("rejected, chosen, reasons", [
    # Wrong colour of a real object: only the colour word changes.
    (f"{COUNT} A small green square is in the center.",
     f"{COUNT} A small blue square is in the center.", ("color",)),
    # Wrong shape, keeping plural form.
    (f"{COUNT} Small blue diamonds are in the center.",
     f"{COUNT} Small blue squares are in the center.", ("shape",)),
    # Wrong size and position, the position phrase rewritten with its preposition.
    (f"{COUNT} A small red circle is on the right.",
     f"{COUNT} A large red circle is at the top left.", ("size", "position")),
    # Position phrase at the start of a sentence keeps its capital.
    (f"{COUNT} On the left, there is a large red circle.",
     f"{COUNT} At the top left, there is a large red circle.", ("position",)),
    # An invented object loses its whole sentence (and one separating space).
    (f"{COUNT} A yellow triangle is at the bottom. A large red circle is at the top left.",
     f"{COUNT} A large red circle is at the top left.", ("invented_object",)),
    (f"{COUNT} A large red circle is at the top left. A yellow triangle is at the bottom.",
     f"{COUNT} A large red circle is at the top left.", ("invented_object",)),
    (f"{COUNT} A large red circle is at the top left. A yellow triangle is at the bottom. "
     "A white diamond is on the right.",
     f"{COUNT} A large red circle is at the top left.", ("invented_object",)),
    # Invented objects sharing a sentence with real ones: only their stretch goes.
    ("A large red circle is at the top left and a white diamond is on the right.",
     "A large red circle is at the top left.", ("invented_object",)),
    ("A white diamond is on the right and a large red circle is at the top left.",
     "A large red circle is at the top left.", ("invented_object",)),
    # Count claims, with number agreement when crossing one.
    ("There are three objects in the image.", COUNT, ("count",)),
    ("There is one object in the image.", COUNT, ("count", "count", "count")),
    ("I count 5 objects.", "I count 2 objects.", ("count",)),
])
def test_hand_made_corrections(rejected, chosen, reasons):
  correction = labeler.correct_description(rejected, SCENE)
  assert correction is not None
  assert correction.rejected == rejected
  assert correction.chosen == chosen
  assert tuple(sorted(correction.reasons)) == tuple(sorted(reasons))


def test_count_agreement_towards_one():
  scene = world.Scene("one", (world.SceneObject("circle", "red", "large", 0),))
  correction = labeler.correct_description("There are three objects in the image.", scene)
  assert correction.chosen == "There is one object in the image."


@pytest.mark.parametrize("text", [
    f"{COUNT} A large red circle is at the top left. A small blue square is in the center.",
    "A red circle. The background is dark.",   # omissions are not hallucinations
    "",
])
def test_nothing_to_correct_gives_none(text):
  assert labeler.correct_description(text, SCENE) is None


@pytest.mark.parametrize("rejected, chosen, reasons", [
    # A second, mis-placed mention of a described object is deleted,
    # not moved onto the first mention (which would make the chosen answer repeat itself).
    (f"{COUNT} In the center, there is a small blue square. At the bottom, there is a "
     "small blue square.",
     f"{COUNT} In the center, there is a small blue square.", ("repeated_mention",)),
    # A verbatim repeat goes too; the first mention's own errors are still fixed.
    (f"{COUNT} A small green square is in the center. A small blue square is in the "
     "center. A large red circle is at the top left.",
     f"{COUNT} A small blue square is in the center. A large red circle is at the top left.",
     ("color", "repeated_mention")),
    # Inside a sentence, only the repeated stretch goes.
    ("A large red circle is at the top left and a red circle is on the right.",
     "A large red circle is at the top left.", ("repeated_mention",)),
    ("circle circle the the", "circle the the", ("repeated_mention",)),
])
def test_repeated_mentions_are_deleted(rejected, chosen, reasons):
  correction = labeler.correct_description(rejected, SCENE)
  assert correction.chosen == chosen
  assert tuple(sorted(correction.reasons)) == tuple(sorted(reasons))
  assert scoring.score_response(chosen, SCENE).repeated == 0


def _sampled_like(scene: world.Scene, rng: np.random.Generator) -> str:
  """A description with a sampled model's errors: objects omitted, described with a wrong
  colour, shape, size or position, invented, or mentioned twice with any attributes, and
  a count claim that may be wrong."""
  said = []
  for obj in scene.objects:
    if rng.random() < 0.2:
      continue  # omitted
    for attribute, values in (("color", tuple(world.COLORS)), ("shape", world.SHAPES),
                              ("size", world.SIZES),
                              ("cell", range(len(world.CELL_NAMES)))):
      if rng.random() < 0.15:
        obj = dataclasses.replace(obj, **{attribute: values[int(rng.integers(len(values)))]})
    said.append(obj)
    if rng.random() < 0.3:  # mentioned again, maybe elsewhere, maybe resized
      cell = int(rng.integers(len(world.CELL_NAMES))) if rng.random() < 0.7 else obj.cell
      said.append(dataclasses.replace(obj, cell=cell))
  for _ in range(int(rng.integers(0, 3))):  # invented objects
    said.append(world.SceneObject(world.SHAPES[int(rng.integers(len(world.SHAPES)))],
                                  tuple(world.COLORS)[int(rng.integers(len(world.COLORS)))],
                                  world.SIZES[int(rng.integers(len(world.SIZES)))],
                                  int(rng.integers(len(world.CELL_NAMES)))))
  order = rng.permutation(len(said))
  sentences = [corpora.object_sentence(said[i], rng) for i in order]
  if rng.random() < 0.8:
    claimed = len(scene.objects) + int(rng.integers(-1, 3))
    sentences.insert(0, corpora.count_sentence(min(max(claimed, 1), 9), rng))
  return " ".join(sentences)


def test_every_chosen_answer_of_sampled_descriptions_is_faithful_and_repeats_nothing():
  """Over a few hundred descriptions with a sampled model's errors, every corrected answer
  has no hallucinated object, no wrong colour, shape, size or position, no wrong count and
  no repeated mention, and needs no further correction."""
  rng = np.random.default_rng(7)
  scenes = world.sample_scenes(23, 400, "s")
  kinds = {"corrected": 0, "repeated_mention": 0}
  for scene in scenes:
    rejected = _sampled_like(scene, rng)
    correction = labeler.correct_description(rejected, scene)
    if correction is None:
      score = scoring.score_response(rejected, scene)
      assert (score.hallucinated, score.attribute_errors, score.repeated) == (0, 0, 0)
      continue
    kinds["corrected"] += 1
    kinds["repeated_mention"] += "repeated_mention" in correction.reasons
    chosen = correction.chosen
    score = scoring.score_response(chosen, scene)
    assert (score.hallucinated, score.attribute_errors, score.repeated) == (0, 0, 0), (
        rejected, chosen)
    assert score.count_correct in (None, True), (rejected, chosen)
    for mention in oracle.parse_description(chosen).mentions:
      assert oracle.ground_mention(mention, scene).wrong == (), (rejected, chosen)
    assert labeler.correct_description(chosen, scene) is None, (rejected, chosen)
  assert kinds["corrected"] > 300 and kinds["repeated_mention"] > 100, kinds


def test_edits_reproduce_chosen_and_touch_only_their_spans():
  rejected = f"{COUNT} A small green square is in the center. A white star. A pink diamond."
  correction = labeler.correct_description(rejected, SCENE)
  rebuilt, cursor = [], 0
  for edit in correction.edits:
    rebuilt += [rejected[cursor:edit.start], edit.replacement]
    cursor = edit.end
  assert "".join(rebuilt + [rejected[cursor:]]) == correction.chosen
  assert correction.chosen == f"{COUNT} A small blue square is in the center. A white star."


def test_corrects_mismatched_captions_to_faithful_ones():
  """On the web corpus: corrections remove every error and nothing else."""
  scenes = world.sample_scenes(21, 300, "p")
  captions = corpora.web_captions(scenes, seed=4, mismatch_rate=0.6)
  corrected = 0
  for scene, caption in zip(scenes, captions):
    correction = labeler.correct_description(caption.response, scene)
    if not caption.mismatches:
      assert correction is None, caption.response
      continue
    if correction is None:  # a recolouring that found no free colour changes nothing
      assert scoring.score_response(caption.response, scene).hallucinated == 0
      continue
    corrected += 1
    score = scoring.score_response(correction.chosen, scene)
    assert score.hallucinated == 0 and score.attribute_errors == 0
    assert score.count_correct
    # Everything a faithful caption says about real objects survives.
    assert score.covered == len(scene.objects), (caption.response, correction.chosen)
    # Idempotent: the corrected text needs no further correction.
    assert labeler.correct_description(correction.chosen, scene) is None
    # Only hallucinated segments change: every sentence without an error and without
    # a count claim is kept verbatim.
    for sentence in caption.response.split(". "):
      sentence = sentence.rstrip(".")
      sentence_score = scoring.score_response(sentence, scene)
      if (sentence_score.hallucinated == 0 and sentence_score.attribute_errors == 0
          and sentence_score.count_correct is None):
        assert sentence in correction.chosen
  assert corrected > 150


def test_spans_mark_exactly_the_edits():
  rejected = (f"{COUNT} A small green square is in the center. A white diamond is on the "
              "right. A small red circle is on the right.")
  correction = labeler.correct_description(rejected, SCENE)
  assert correction.chosen == (f"{COUNT} A small blue square is in the center. "
                               "A large red circle is at the top left.")
  assert [rejected[s:e] for s, e in correction.rejected_spans()] == [
      "green", "A white diamond is on the right. ", "small", "on the right"]
  assert [correction.chosen[s:e] for s, e in correction.chosen_spans()] == [
      "blue", "large", "at the top left"]


def test_the_store_marks_every_edit_of_the_oracle(tmp_path):
  """The oracle annotates through the annotation store (as the demo does): the spans the
  store finds by diffing the answer and the correction cover every edit of the oracle,
  and outside them both texts are the same. (They need not be the oracle's spans: a
  deletion next to a repeated word, e.g. "A", can be aligned on either copy.)"""
  rejected = (f"{COUNT} A small green square is in the center. A white diamond is on the "
              "right. A small red circle is on the right.")
  correction = labeler.correct_description(rejected, SCENE)
  store = store_lib.AnnotationStore(tmp_path / "s.sqlite")
  store.add_items([store_lib.Item("x", "x.png", "Describe the image.", rejected)])
  annotation = store.submit("oracle", "x", "corrected", correction.chosen, lease_token="",
                            submission_id="1").annotation
  for found, edited in ((annotation.rejected_spans, correction.rejected_spans()),
                        (annotation.chosen_spans, correction.chosen_spans())):
    marked = {c for s, e in found for c in range(s, e)}
    assert all(marked & set(range(s, e)) for s, e in edited), (found, edited)

  def unmarked(text, spans):
    return [w for w in re.split(r"\s+", "".join(
        " " if any(s <= c < e for s, e in spans) else ch for c, ch in enumerate(text))) if w]
  assert unmarked(rejected, annotation.rejected_spans) == unmarked(
      correction.chosen, annotation.chosen_spans)
