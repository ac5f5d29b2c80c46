"""Object HalBench, rule-based CHAIR: mention extraction cases and hand-computed metrics."""

import json
import math

import pytest

from rlhfv_jax.evals import chair, objhal


@pytest.fixture(scope="module")
def vocabulary():
  return objhal.Vocabulary()


@pytest.mark.parametrize("text, want", [
    # Irregular plurals and WordNet's lemmas ("people" stays "people": person).
    ("Two people and three mice.", ["person", "mouse"]),
    ("Children with knives, skis and buses.", ["person", "knife", "skis", "bus"]),
    # "glasses" -> "glass": only "wine glass" is an object.
    ("Wine glasses and reading glasses on a dining table.", ["wine glass", "dining table"]),
    ("Two hot dogs, a baby elephant and a passenger train.", ["hot dog", "elephant", "train"]),
    ("A bow tie and sports balls.", ["tie", "sports ball"]),
    # "toilet seat" is the toilet; duplicates are kept.
    ("A toilet seat next to the toilet.", ["toilet", "toilet"]),
    # "train track" and "home plate" are phrases, not a train or a plate; "hot-dog" is one
    # Treebank token, not a hot dog.
    ("A hot-dog stand by the train tracks near home plate.", []),
    ("A TEDDY BEAR on a Couch.", ["teddy bear", "couch"]),
    ("The man's surfboard.", ["person", "surfboard"]),
])
def test_mentions(vocabulary, text, want):
  assert vocabulary.mentions(text) == want


@pytest.fixture
def coco(tmp_path):
  categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"},
                {"id": 59, "name": "pizza"}]
  (tmp_path / "instances_val2014.json").write_text(json.dumps({
      "categories": categories, "images": [{"id": 1}, {"id": 2}, {"id": 3}],
      "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 1, "category_id": 1},
                      {"image_id": 2, "category_id": 59}]}))
  (tmp_path / "captions_val2014.json").write_text(json.dumps({"annotations": [
      {"image_id": 1, "caption": "A man walks a dog on a leash."},
      {"image_id": 1, "caption": "A woman with her puppy near a bench."},
      {"image_id": 2, "caption": "A pizza on a dining table next to wine glasses."}]}))
  return objhal.CocoObjects(tmp_path)


def test_ground_truth_unites_instances_and_captions(coco):
  assert coco.ground_truth[1] == {"person", "dog", "bench"}
  assert coco.ground_truth[2] == {"pizza", "dining table", "wine glass"}
  assert coco.ground_truth[3] == set()


def test_score_hand_computed(coco):
  responses = ["A man and his dog sit on a bench next to a cat.",   # cat hallucinated
               "Two pizzas and two hot dogs on the table.",         # hot dog hallucinated
               "A delicious meal."]                                 # no mention
  got = coco.score([1, 2, 2], responses)
  assert got["chair_s"] == pytest.approx(2 / 3)
  assert got["response_hall"] == pytest.approx(2 / 2)
  assert got["chair_i"] == pytest.approx(2 / 7)       # 4 + 3 mentions
  assert got["recall"] == pytest.approx((3 + 2 + 0) / 9)
  assert got["avg_words"] == pytest.approx((13 + 9 + 3) / 3)
  assert got["num_responses"] == 3
  with pytest.raises(KeyError, match="image 99"):
    coco.score([99], ["A dog."])


def test_chair_core_undefined_rates_are_nan():
  got = chair.chair_metrics([chair.MentionCounts(0, 0, 0, 0, 2)])
  assert got["chair_s"] == 0.0 and math.isnan(got["chair_i"]) and math.isnan(got["recall"])
  assert math.isnan(got["response_hall"])


def test_a_synonyms_file_of_your_own(tmp_path):
  (tmp_path / "syn.txt").write_text("dog, puppy\n\ncat, kitten\n")
  vocabulary = objhal.Vocabulary(objhal.read_synonyms(tmp_path / "syn.txt"))
  assert vocabulary.mentions("Two puppies and a kitten on a bench.") == ["dog", "cat"]
  assert len(objhal.COCO_SYNONYMS) == 80 and len(objhal.PROMPTS) == 8
