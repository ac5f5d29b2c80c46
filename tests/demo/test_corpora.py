"""Tests of the demo corpora: faithful vs mismatched captions, VQA answers."""

from __future__ import annotations

import re

import pytest

from rlhfv_jax.demo import corpora, world

SCENES = world.sample_scenes(11, 400, "c")


def _asserted_objects(caption: str) -> set[tuple[str, str, str, str]]:
  """(size, colour, shape, where) of every object sentence, read with a regex."""
  where = "|".join(corpora.WHERE_PHRASES)
  pattern = re.compile(rf"({where}),? (?:there is|I can see|is) a (small|large) (\w+) (\w+)\.",
                       re.IGNORECASE)
  return {(size, color, shape, place.lower())
          for place, size, color, shape in pattern.findall(caption)}


def _truth(scene: world.Scene) -> set[tuple[str, str, str, str]]:
  return {(o.size, o.color, o.shape, corpora.WHERE_PHRASES[o.cell]) for o in scene.objects}


def _stated_count(caption: str) -> int:
  first = caption.split(".")[0].split()
  return next(world.NUMBER_WORDS.index(w) for w in first if w in world.NUMBER_WORDS)


def test_faithful_captions_state_exactly_the_scene():
  captions = corpora.web_captions(SCENES, seed=0, mismatch_rate=0.0)
  assert len(captions) == len(SCENES)
  for scene, caption in zip(SCENES, captions):
    assert caption.scene_id == scene.scene_id and caption.mismatches == ()
    assert caption.prompt in corpora.DESCRIPTION_PROMPTS
    assert _asserted_objects(caption.response) == _truth(scene), caption.response
    assert _stated_count(caption.response) == len(scene.objects)


def test_mismatched_captions_differ_from_the_scene_as_recorded():
  captions = corpora.web_captions(SCENES, seed=1, mismatch_rate=1.0)
  extra_from_prior = extra_total = 0
  for scene, caption in zip(SCENES, captions):
    assert 1 <= len(caption.mismatches) <= 2
    asserted, truth = _asserted_objects(caption.response), _truth(scene)
    invented = asserted - truth
    n_extra = caption.mismatches.count("extra_object")
    n_recolor = caption.mismatches.count("wrong_color")
    # Each recolouring replaces one true object (unless no colour was free).
    assert len(truth - asserted) <= n_recolor
    assert len(invented) <= n_extra + n_recolor and len(invented) >= n_extra
    # The count sentence counts the caption's own (wrong) object list.
    assert _stated_count(caption.response) == len(scene.objects) + n_extra
    companions = {corpora.companion_kind(o) for o in scene.objects}
    for size, color, shape, where in invented:
      if scene.find(color, shape) is None and all(
          (o.size, o.shape, corpora.WHERE_PHRASES[o.cell]) != (size, shape, where)
          for o in scene.objects):
        extra_total += 1
        extra_from_prior += (color, shape) in companions
  # Invented objects follow the co-occurrence prior (the systematic part of the noise).
  assert extra_total > 100 and extra_from_prior / extra_total > 0.9


def test_mismatch_rate_is_respected():
  captions = corpora.web_captions(SCENES * 5, seed=2, mismatch_rate=0.3)
  share = sum(bool(c.mismatches) for c in captions) / len(captions)
  assert share == pytest.approx(0.3, abs=0.03)


def test_captions_are_deterministic_per_seed():
  a = corpora.web_captions(SCENES[:50], seed=3, mismatch_rate=0.5)
  assert a == corpora.web_captions(SCENES[:50], seed=3, mismatch_rate=0.5)
  assert a != corpora.web_captions(SCENES[:50], seed=4, mismatch_rate=0.5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mismatch_rate=1.5), "mismatch_rate"),
    (dict(mismatch_rate=0.5, mismatch_weights={"wrong_shape": 1.0}), "mismatch_weights"),
    (dict(mismatch_rate=0.5, mismatch_weights={"extra_object": 0.0}), "positive sum"),
])
def test_caption_argument_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    corpora.web_captions(SCENES[:3], seed=0, **kwargs)


def _answer_independently(scene: world.Scene, question: str) -> str:
  """Answers a VQA question from the scene with regexes over the question text."""
  where = {p: i for i, p in enumerate(corpora.WHERE_PHRASES)}
  if question.startswith("How many objects"):
    return world.NUMBER_WORDS[len(scene.objects)]
  if m := re.match(r"What color is the (\w+) (.+)\?", question):
    return next(o.color for o in scene.objects
                if o.shape == m[1] and o.cell == where[m[2]])
  if m := re.match(r"What shape is (.+)\?", question):
    return next(o.shape for o in scene.objects if o.cell == where[m[1]])
  if m := re.match(r"Where is the (\w+) (\w+)\?", question):
    return world.CELL_NAMES[scene.find(m[1], m[2]).cell]
  if m := re.match(r"Is the (\w+) (\w+) small or large\?", question):
    return scene.find(m[1], m[2]).size
  if m := re.match(r"Is there a (\w+) (\w+) in the image\?", question):
    return "Yes" if scene.find(m[1], m[2]) else "No"
  raise AssertionError(f"unexpected question {question!r}")


def test_vqa_answers_are_correct_and_types_balanced():
  pairs = corpora.vqa_pairs(SCENES, seed=5, per_scene=3)
  assert len(pairs) == 3 * len(SCENES)
  by_scene = {s.scene_id: s for s in SCENES}
  types, presence = {}, {"Yes": 0, "No": 0}
  for pair in pairs:
    question, suffix = pair.prompt.split("\n")
    assert suffix == corpora.VQA_SUFFIX
    assert pair.response == _answer_independently(by_scene[pair.scene_id], question)
    types[pair.source] = types.get(pair.source, 0) + 1
    if pair.source == "vqa/presence":
      presence[pair.response] += 1
  assert set(types) == {f"vqa/{t}" for t in corpora.VQA_TYPES}
  assert min(types.values()) > 0.1 * len(pairs)
  assert abs(presence["Yes"] - presence["No"]) < 0.2 * sum(presence.values())


def test_vqa_type_errors():
  with pytest.raises(ValueError, match="subset"):
    corpora.vqa_pairs(SCENES[:2], seed=0, types=("colour",))


def test_description_prompts_take_turns():
  first, second, third = corpora.DESCRIPTION_PROMPTS
  assert corpora.description_prompts(5) == [first, second, third, first, second]
  assert corpora.description_prompts(0) == []
