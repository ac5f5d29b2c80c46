"""Tests of the oracle labeler: hand-made corrections and corpus-wide properties."""

from __future__ import annotations

import re

import pytest

from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.demo import corpora, labeler, metrics, world

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
    "circle circle the the",                   # repeats of a real type are not invented
])
def test_nothing_to_correct_gives_none(text):
  assert labeler.correct_description(text, SCENE) is None


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
      assert metrics.score_response(caption.response, scene).hallucinated == 0
      continue
    corrected += 1
    score = metrics.score_response(correction.chosen, scene)
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
      sentence_score = metrics.score_response(sentence, scene)
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
