"""POPE scorer: the official answer rule and metrics, hand-computed."""

import json

import pytest

from rlhfv_jax.evals import pope


@pytest.mark.parametrize("text, want", [
    ("Yes", "yes"), ("No", "no"), ("no", "no"),
    ("NO", "yes"),                      # only "No", "not", "no" count
    ("Not really.", "yes"),             # "Not" is not "not"
    ("Yes. But not a dog.", "yes"),     # only the first sentence
    ("I don't see a dog.", "yes"),      # "don't" is not "not"
    ("There is no dog.", "no"),
    ("no\n", "yes"),                    # split on single spaces: "no\n" is not "no"
    ("no, it is not", "no"),            # commas removed
    ("It is not there", "no"),
])
def test_parse_answer_official_rule(text, want):
  assert pope.parse_answer(text) == want


def test_score_hand_computed():
  answers = ["Yes", "Yes, there is.", "No", "Yes", "There is no cat."]
  labels = ["yes", "no", "no", "yes", "yes"]
  # parsed: yes yes no yes no -> TP 2 (0, 3), FP 1 (1), TN 1 (2), FN 1 (4)
  got = pope.score(answers, labels)
  assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (2, 1, 1, 1)
  assert got["accuracy"] == pytest.approx(3 / 5)
  assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(2 / 3)
  assert got["f1"] == pytest.approx(2 / 3) and got["yes_ratio"] == pytest.approx(3 / 5)
  with pytest.raises(ValueError, match="'yes' or 'no'"):
    pope.score(["Yes"], ["maybe"])
  with pytest.raises(ValueError, match="1 predictions for 2 labels"):
    pope.score(["Yes"], ["yes", "no"])


def test_read_questions_names_a_bad_line(tmp_path):
  good = {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
          "text": "Is there a snowboard in the image?", "label": "yes"}
  path = tmp_path / "coco_pope_random.json"
  path.write_text(json.dumps(good) + "\n\n" + json.dumps(dict(good, label="maybe")) + "\n")
  with pytest.raises(ValueError, match="coco_pope_random.json line 3: .*label 'maybe'"):
    list(pope.read_questions(path))
  path.write_text(json.dumps(good) + "\n")
  assert list(pope.read_questions(path)) == [good]
  assert len(pope.file_sha256(path)) == 64
