"""Tests of description parsing and mention grounding."""

from __future__ import annotations

import pytest

from rlhfv_jax.demo import oracle, world

SCENE = world.Scene("g", (
    world.SceneObject("circle", "red", "large", 0),      # top left
    world.SceneObject("square", "blue", "small", 4),     # center
    world.SceneObject("circle", "green", "small", 8),    # bottom right
))


def _mention(text: str) -> oracle.Mention:
  (mention,) = oracle.parse_description(text).mentions
  return mention


def test_parse_sentences_mentions_and_counts():
  text = ("There are three objects in the image.  A large red circle is at the top left "
          "and a small blue square is in the center. Nothing else. Two shapes!")
  parsed = oracle.parse_description(text)
  assert [text[s.start:s.end] for s in parsed.sentences] == [
      "There are three objects in the image.",
      "A large red circle is at the top left and a small blue square is in the center.",
      "Nothing else.", "Two shapes!"]
  assert [c.count for c in parsed.count_claims] == [3, 2]
  first, second = parsed.mentions
  assert (first.size, first.color, first.shape, first.cell) == ("large", "red", "circle", 0)
  assert (second.size, second.color, second.shape, second.cell) == ("small", "blue", "square", 4)
  assert text[first.span[0]:first.span[1]] == "large red circle is at the top left"
  assert [w.text for w in second.position_words] == ["center"]


@pytest.mark.parametrize("text, cell", [
    ("a circle at the top", 1), ("a circle at the bottom right", 8), ("a circle on the left", 3),
    ("a circle in the middle", 4), ("a circle", None), ("a circle at the top left", 0),
])
def test_position_phrases(text, cell):
  assert _mention(text).cell == cell


def test_unstated_attributes_are_none_and_plurals_are_heads():
  m = _mention("I see circles.")
  assert (m.shape, m.color, m.size, m.cell) == ("circle", None, None, None)
  assert oracle.parse_description("Digits: 3 objects.").count_claims[0].count == 3
  assert oracle.parse_description("three red things").count_claims[0].count == 3
  assert oracle.parse_description("three red").count_claims == ()


@pytest.mark.parametrize("text, exists, referent_cell, wrong", [
    ("A large red circle at the top left.", True, 0, ()),
    ("A small red circle at the center.", True, 0, ("size", "position")),
    ("A green circle.", True, 8, ()),
    # Bare shape: the circle that best fits the other stated attributes.
    ("A small circle at the bottom right.", True, 8, ()),
    ("A large circle.", True, 0, ()),
    # Absent type, but the stated cell holds an object sharing colour or shape.
    ("A small red square in the center.", False, 4, ("color",)),
    ("A small blue diamond in the center.", False, 4, ("shape",)),
    ("A large yellow circle at the bottom right.", False, 8, ("color", "size")),
    # Absent type and nothing relatable at the stated cell: an invented object.
    ("A yellow diamond in the center.", False, None, ()),
    ("A red square on the right.", False, None, ()),
    ("A red square.", False, None, ()),
    ("A triangle at the top left.", False, None, ()),
])
def test_grounding(text, exists, referent_cell, wrong):
  g = oracle.ground_mention(_mention(text), SCENE)
  assert g.exists == exists
  assert (g.referent.cell if g.referent else None) == referent_cell
  assert g.wrong == wrong
