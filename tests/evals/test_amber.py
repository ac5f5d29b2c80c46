"""AMBER discriminative scorer against hand-computed official figures ("No" is the positive
class; every denominator a counter starting at 0.001; F1 from the rounded P and R)."""

import json

import pytest

from rlhfv_jax.evals import amber

FIGURES = ("accuracy", "precision", "recall", "f1")


def _figures(block):
  return tuple(block[k] for k in FIGURES)


def test_normalize():
  assert [amber.normalize(r) for r in ("Yes", "yes.", " No, there is none", "Maybe", "")] == [
      "Yes", "Yes", "No", "Maybe", ""]


def test_official_type_strings():
  assert [amber.kind_of(t) for t in (
      "discriminative-hallucination", "discriminative-attribute-state",
      "discriminative-attribute-number", "discriminative-attribute-action",
      "discriminative-relation", "relation")] == [
          "existence", "state", "number", "action", "relation", "relation"]
  assert amber.dimension_of("discriminative-attribute-number") == "attribute"
  # The official rule: any type it does not name is relation.
  assert amber.dimension_of("discriminative-existence") == "relation"
  with pytest.raises(ValueError, match="generative"):
    amber.kind_of("generative")


def test_half_way_rounding_relation():
  """The issue's case: 1,664 relation items (the official split, 975 "yes" typed
  discriminative-relation, 689 "no" typed relation), 1,144 right."""
  truths = ["yes"] * 975 + ["no"] * 689
  types = ["discriminative-relation"] * 975 + ["relation"] * 689
  # Every "no" answered "No" (TP 689); 455 "yes" right, 520 answered "No" (FP).
  responses = ["Yes"] * 455 + ["No"] * 520 + ["No"] * 689
  got = amber.score(responses, truths, types)["official"]["relation"]
  assert (got["items"], got["correct"], got["tp"], got["fp"], got["fn"]) == (
      1664, 1144, 689, 520, 0)
  # accuracy 1144 / 1664.001 = 68.74996 -> 68.7 (1144 / 1664 = 68.75 would round to 68.8);
  # precision 689 / 1209.001 = 56.9892 -> 57.0; recall 689 / 689.001 = 99.99985 -> 100.0;
  # F1 2 * .57 * 1.0 / (.57 + 1.0 + .0001) = 72.607 -> 72.6.
  assert _figures(got) == (0.687, 0.570, 1.0, 0.726)


def test_score_hand_computed():
  rows = [  # (type, truth, response)
      ("discriminative-hallucination", "no", "No"),
      ("discriminative-hallucination", "no", "No"),
      ("discriminative-hallucination", "no", "Yes"),
      ("discriminative-attribute-state", "yes", "Yes"),
      ("discriminative-attribute-state", "no", "no"),  # wrong officially, "No" normalized
      ("discriminative-attribute-number", "yes", "No"),
      ("discriminative-attribute-number", "no", "No"),
      ("discriminative-attribute-action", "no", "Maybe"),  # wrong in both
      ("discriminative-relation", "yes", "Yes"),
      ("relation", "no", "No, there is not."),  # wrong officially, "No" normalized
  ]
  types, truths, responses = zip(*rows)
  got = amber.score(responses, truths, types)
  official, normalized = got["official"], got["normalized"]
  assert set(official) == set(normalized) == set(amber.BLOCKS)
  assert (got["items"], got["changed_by_normalization"]) == (10, 2)

  # Existence: TP 2, FN 1. accuracy 2 / 3.001 = 66.644 -> 66.6 (2 / 3 would be 66.7);
  # precision 2 / 2.001 = 99.950 -> 100.0; recall 66.6;
  # F1 2 * 1.0 * .666 / (1.0 + .666 + .001) = 79.904 -> 79.9 (with + .0001: 79.95 -> 80.0).
  assert _figures(official["existence"]) == (0.666, 1.0, 0.666, 0.799)
  # Number: FP 1, TP 1. accuracy 1 / 2.001 = 49.975 -> 50.0; precision 1 / 2.001 -> 50.0;
  # recall 1 / 1.001 = 99.900 -> 99.9; F1 2 * .5 * .999 / (.5 + .999 + .0001) = 66.640 -> 66.6.
  assert _figures(official["number"]) == (0.5, 0.5, 0.999, 0.666)
  assert _figures(official["state"]) == (0.5, 0.0, 0.0, 0.0)
  assert _figures(official["action"]) == (0.0, 0.0, 0.0, 0.0)
  # Attribute sums the three counters: accuracy 2 / (2.001 + 2.001 + 1.001) = 39.976 -> 40.0;
  # precision 1 / (0.001 + 2.001 + 0.001) = 49.925 -> 49.9 (one 0.001 counter: 50.0);
  # recall 1 / (1.001 + 1.001 + 1.001) = 33.300 -> 33.3;
  # F1 2 * .499 * .333 / (.499 + .333 + .0001) = 39.939 -> 39.9.
  assert _figures(official["attribute"]) == (0.4, 0.499, 0.333, 0.399)
  assert _figures(official["relation"]) == (0.5, 0.0, 0.0, 0.0)
  # Overall, one counter per quantity: accuracy 5 / 10.001 = 49.995 -> 50.0;
  # precision 3 / 4.001 = 74.981 -> 75.0; recall 3 / 7.001 = 42.851 -> 42.9;
  # F1 2 * .75 * .429 / (.75 + .429 + .0001) = 54.576 -> 54.6.
  assert _figures(official["overall"]) == (0.5, 0.75, 0.429, 0.546)
  assert {k: got[k] for k in FIGURES} == {k: official["overall"][k] for k in FIGURES}
  assert {k: official["overall"][k] for k in ("items", "correct", "unanswered", "tp", "fp",
                                              "tn", "fn")} == dict(
      items=10, correct=5, unanswered=3, tp=3, fp=1, tn=2, fn=4)

  # Normalized: "no" and "No, there is not." become "No" (TP); "Maybe" stays wrong.
  # State: accuracy 2 / 2.001 = 99.950 -> 100.0; precision, recall 1 / 1.001 -> 99.9;
  # F1 2 * .999 * .999 / (.999 + .999 + .0001) = 99.895 -> 99.9.
  assert _figures(normalized["state"]) == (1.0, 0.999, 0.999, 0.999)
  assert _figures(normalized["relation"]) == (1.0, 0.999, 0.999, 0.999)
  assert normalized["existence"] == official["existence"]
  # Attribute: accuracy 3 / 5.003 = 59.964 -> 60.0; precision 2 / (1.001 + 2.001 + 0.001)
  # = 66.600 -> 66.6; recall 2 / 3.003 -> 66.6; F1 .8871 / 1.3321 = 66.595 -> 66.6.
  assert _figures(normalized["attribute"]) == (0.6, 0.666, 0.666, 0.666)
  # Overall: accuracy 7 / 10.001 = 69.993 -> 70.0; precision 5 / 6.001 = 83.319 -> 83.3;
  # recall 5 / 7.001 = 71.418 -> 71.4; F1 2 * .833 * .714 / (.833 + .714 + .0001) = 76.887
  # -> 76.9.
  assert _figures(normalized["overall"]) == (0.7, 0.833, 0.714, 0.769)
  assert normalized["overall"]["unanswered"] == 1

  with pytest.raises(ValueError, match="truths must be"):
    amber.score(["Yes"], ["maybe"], ["relation"])
  with pytest.raises(ValueError, match="generative"):
    amber.score(["Yes"], ["yes"], ["generative"])


def test_empty_blocks_score_zero_as_the_official_script_prints():
  got = amber.score(["No"], ["no"], ["discriminative-hallucination"])["official"]
  for block in ("attribute", "state", "number", "action", "relation"):
    assert _figures(got[block]) == (0.0, 0.0, 0.0, 0.0) and got[block]["items"] == 0
  # 1 / 1.001 = 99.900 -> 99.9; F1 2 * .999 * .999 / (1.998 + .001) = 99.850025 -> 99.9.
  assert _figures(got["existence"]) == (0.999, 0.999, 0.999, 0.999)
  assert _figures(got["overall"]) == (0.999, 0.999, 0.999, 0.999)


def _official_layout(tmp_path):
  """annotations.json as the repository lays it out: ids 1-1004 generative (word lists),
  then discriminative items in id order; existence items are all truth "no"."""
  annotations = [{"id": i, "type": "generative", "truth": ["sky", "tree"], "hallu": ["dog"]}
                 for i in range(1, 1005)]
  discriminative = [
      ("discriminative-attribute-state", "yes"), ("discriminative-attribute-state", "no"),
      ("discriminative-attribute-number", "yes"), ("discriminative-attribute-number", "no"),
      ("discriminative-attribute-action", "yes"), ("discriminative-attribute-action", "no"),
      ("discriminative-hallucination", "no"), ("discriminative-hallucination", "no"),
      ("discriminative-hallucination", "no"), ("discriminative-hallucination", "no"),
      ("discriminative-relation", "yes"), ("relation", "no")]
  annotations += [{"id": 1005 + k, "type": t, "truth": v}
                  for k, (t, v) in enumerate(discriminative)]
  queries = [{"id": 1005 + k, "image": f"AMBER_{1 + k // 4}.jpg",
              "query": "Is there a dog in this image?"} for k in range(len(discriminative))]
  (tmp_path / "annotations.json").write_text(json.dumps(annotations))
  (tmp_path / "query_discriminative.json").write_text(json.dumps(queries))
  return tmp_path / "query_discriminative.json", tmp_path / "annotations.json", queries


def test_read_and_score_the_official_layout(tmp_path):
  query_file, annotations_file, _ = _official_layout(tmp_path)
  items = amber.read_discriminative(query_file, annotations_file)
  assert [i["id"] for i in items] == list(range(1005, 1017))
  assert [i["dimension"] for i in items] == ["attribute"] * 6 + ["existence"] * 4 + [
      "relation"] * 2
  assert items[6] == dict(id=1011, image="AMBER_2.jpg", query="Is there a dog in this image?",
                          truth="no", type="discriminative-hallucination",
                          dimension="existence")
  # Every answer right, as the official script wants them.
  responses = ["Yes" if i["truth"] == "yes" else "No" for i in items]
  got = amber.score(responses, [i["truth"] for i in items], [i["type"] for i in items])
  official = got["official"]
  assert [official[b]["items"] for b in amber.BLOCKS] == [12, 4, 6, 2, 2, 2, 2]
  # Existence: 4 / 4.001 = 99.975 -> 100.0 (P, R, accuracy); F1 2 / 2.001 = 99.950 -> 100.0.
  assert _figures(official["existence"]) == (1.0, 1.0, 1.0, 1.0)
  # State: accuracy 2 / 2.001 -> 100.0; P, R 1 / 1.001 = 99.9; F1 99.895 -> 99.9.
  assert _figures(official["state"]) == (1.0, 0.999, 0.999, 0.999)
  # Attribute: P, R 3 / 3.003 = 99.900 -> 99.9; accuracy 6 / 6.003 = 99.950 -> 100.0.
  assert _figures(official["attribute"]) == (1.0, 0.999, 0.999, 0.999)
  # Overall: accuracy 12 / 12.001 -> 100.0; P, R 8 / 8.001 = 99.988 -> 100.0;
  # F1 2 / 2.0001 = 99.995 -> 100.0.
  assert _figures(official["overall"]) == (1.0, 1.0, 1.0, 1.0)
  assert got["changed_by_normalization"] == 0 and got["normalized"] == official


def test_read_rejects_what_is_not_a_discriminative_item(tmp_path):
  query_file, annotations_file, queries = _official_layout(tmp_path)
  # A generative query (ids 1-1004): named, or passed on and left out.
  query_file.write_text(json.dumps(
      [{"id": 7, "image": "AMBER_7.jpg", "query": "Describe this image."}] + queries))
  with pytest.raises(ValueError, match="query id 7 .* generative range"):
    amber.read_discriminative(query_file, annotations_file)
  errors = []
  assert len(amber.read_discriminative(query_file, annotations_file, errors.append)) == 12
  assert len(errors) == 1
  # A query without its annotation.
  query_file.write_text(json.dumps(
      queries + [{"id": 99999, "image": "AMBER_1.jpg", "query": "Is it?"}]))
  with pytest.raises(ValueError, match="query id 99999"):
    amber.read_discriminative(query_file, annotations_file)
  # An annotation whose type is generative although the id is discriminative.
  annotations = json.loads(annotations_file.read_text())
  annotations[1004] = {"id": 1005, "type": "generative", "truth": ["sky"], "hallu": []}
  annotations_file.write_text(json.dumps(annotations))
  query_file.write_text(json.dumps(queries))
  with pytest.raises(ValueError, match="no discriminative annotation .* query id 1005"):
    amber.read_discriminative(query_file, annotations_file)
