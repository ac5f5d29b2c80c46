"""Tests of the CHAIR-style metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from rlhfv_jax.demo import scoring, world

SCENE = world.Scene("m", (
    world.SceneObject("circle", "red", "large", 0),      # top left
    world.SceneObject("square", "blue", "small", 4),     # center
    world.SceneObject("circle", "green", "small", 8),    # bottom right
))
FAITHFUL = ("There are three objects in the image. A large red circle is at the top left. "
            "A small blue square is in the center. A small green circle is at the bottom right.")
WRONG = ("There are four objects in the image. A large red circle is on the right. "
         "A yellow triangle is at the bottom.")
INVENTED = "A blue circle and a red square."


def test_response_scores_by_hand():
  assert scoring.score_response(FAITHFUL, SCENE) == scoring.ResponseScore(
      mentions=3, hallucinated=0, attribute_errors=0, covered=3, objects=3,
      count_correct=True, words=7 + 9 + 8 + 9)
  assert scoring.score_response(WRONG, SCENE) == scoring.ResponseScore(
      mentions=2, hallucinated=1, attribute_errors=1, covered=1, objects=3,
      count_correct=False, words=7 + 8 + 7,
      # The yellow triangle is the web corpus's companion of the blue square.
      co_occurring=1)
  # Neither a blue circle nor a red square is a companion (blue square, yellow triangle,
  # white square) of the scene's objects.
  assert scoring.score_response(INVENTED, SCENE) == scoring.ResponseScore(
      mentions=2, hallucinated=2, attribute_errors=0, covered=0, objects=3,
      count_correct=None, words=7)


def test_aggregate_by_hand():
  got = scoring.aggregate(scoring.score_responses([FAITHFUL, WRONG, "", INVENTED], [SCENE] * 4))
  want = {
      "chair_s": 2 / 4,                  # WRONG and INVENTED hallucinate
      "chair_i": (1 + 2) / (3 + 2 + 2),  # hallucinated mentions / mentions
      "recall": (3 + 1) / 12,            # covered objects / objects
      "attribute_error_rate": 1 / (3 + 1),   # over mentions of present types
      "count_accuracy": 1 / 2,
      "avg_words": (33 + 22 + 0 + 7) / 4,
      "co_occurrence_share": 1 / 3,      # the yellow triangle, of three hallucinated
      "responses": 4.0,
  }
  assert got.keys() == want.keys()
  assert set(scoring.METRIC_NAMES) <= got.keys()
  for key, value in want.items():
    assert got[key] == pytest.approx(value), key


def test_silence_does_not_look_good():
  got = scoring.aggregate(scoring.score_responses(["", "Nothing to see."], [SCENE] * 2))
  assert got["chair_s"] == 0.0 and got["recall"] == 0.0 and got["avg_words"] == 1.5
  assert math.isnan(got["chair_i"]) and math.isnan(got["count_accuracy"])
  assert math.isnan(got["attribute_error_rate"]) and math.isnan(got["co_occurrence_share"])
  faithful = scoring.aggregate(scoring.score_responses([FAITHFUL], [SCENE]))
  assert faithful["recall"] == 1.0 and faithful["chair_i"] == 0.0


def test_repeated_mentions_cover_an_object_once():
  got = scoring.score_response("A red circle. A red circle. A large red circle.", SCENE)
  assert (got.mentions, got.covered, got.hallucinated) == (3, 1, 0)


def test_errors():
  with pytest.raises(ValueError, match="2 descriptions for 1 scenes"):
    scoring.score_responses(["a", "b"], [SCENE])
  with pytest.raises(ValueError, match="no responses"):
    scoring.aggregate([])
