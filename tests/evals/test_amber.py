"""AMBER discriminative scorer, hand-computed ("No" is the positive class)."""

import json

import pytest

from rlhfv_jax.evals import amber


def test_normalize():
  assert [amber.normalize(r) for r in ("Yes", "yes.", " No, there is none", "Maybe", "")] == [
      "Yes", "Yes", "No", "Maybe", ""]


def test_score_hand_computed():
  responses = ["Yes", "No.", "no, there is none", "Maybe", "No", "Yes"]
  truths = ["yes", "no", "no", "no", "yes", "no"]
  dimensions = ["existence", "existence", "attribute", "attribute", "relation", "relation"]
  got = amber.score(responses, truths, dimensions)
  # predicted: Yes No No Maybe No Yes. TP: items 2, 3; FP: 5; FN: 4 (no answer), 6; TN: 1.
  assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (2, 1, 1, 2)
  assert got["accuracy"] == pytest.approx(3 / 6)
  assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(2 / 4)
  # F1 from precision and recall rounded to 0.1%: 66.7 and 50.0.
  assert got["f1"] == pytest.approx(2 * 66.7 * 50.0 / (66.7 + 50.0) / 100)
  assert (got["normalized"], got["unanswered"], got["items"]) == (2, 1, 6)
  by = got["by_dimension"]
  assert by["existence"]["accuracy"] == 1.0 and by["existence"]["f1"] == pytest.approx(1.0)
  assert by["attribute"]["accuracy"] == 0.5
  assert by["attribute"]["f1"] == pytest.approx(2 * 100 * 50 / 150 / 100)
  assert by["relation"]["accuracy"] == 0.0 and by["relation"]["f1"] == 0.0
  with pytest.raises(ValueError, match="dimensions in"):
    amber.score(["Yes"], ["yes"], ["colour"])


def test_read_discriminative(tmp_path):
  queries = [{"id": 1005, "image": "AMBER_5.jpg", "query": "Is there a dog in this image?"},
             {"id": 1006, "image": "AMBER_5.jpg", "query": "Is the dog running?"}]
  annotations = [{"id": 1, "type": "generative"},
                 {"id": 1005, "type": "discriminative-existence", "truth": "no"},
                 {"id": 1006, "type": "discriminative-attribute-action", "truth": "yes"}]
  (tmp_path / "q.json").write_text(json.dumps(queries))
  (tmp_path / "a.json").write_text(json.dumps(annotations))
  items = amber.read_discriminative(tmp_path / "q.json", tmp_path / "a.json")
  assert [(i["id"], i["truth"], i["dimension"]) for i in items] == [
      (1005, "no", "existence"), (1006, "yes", "attribute")]
  (tmp_path / "a.json").write_text(json.dumps(annotations[:2]))
  with pytest.raises(ValueError, match="query id 1006"):
    amber.read_discriminative(tmp_path / "q.json", tmp_path / "a.json")
