"""AMBER discriminative (Wang et al. 2023, junyangwang0410/AMBER `inference.py`).

`data/annotations.json` holds one entry per item (ids >= 1005 are discriminative, with a
`truth` of "yes"/"no" and a `type` such as "discriminative-attribute-state");
`data/query/query_discriminative.json` holds `{"id", "image", "query"}`.

The official scorer counts a response as an answer only if it is exactly "Yes" or "No";
anything else is wrong. Models say "Yes." or "no, there is not", so responses are
normalized first (first word, punctuation stripped, case folded: "yes"/"no") and the
result reports how many needed it; what stays neither is wrong. **"No" is the positive
class** (the model says an object/attribute/relation is absent). Metrics overall and per
dimension (existence; attribute = state, number, action; relation). Like the official
script, F1 is computed from precision and recall rounded to 0.1 percent.

Published: LLaVA-1.5-7B accuracy 73.5, F1 77.6 (cited by RLAIF-V). The generative half
needs spaCy word vectors that cannot be installed offline: not implemented.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Callable, Optional, Sequence

from rlhfv_jax.evals import binary

DIMENSIONS = ("existence", "attribute", "relation")
FIRST_DISCRIMINATIVE_ID = 1005
_WORD = re.compile(r"[A-Za-z]+")


def normalize(response: str) -> str:
  """"Yes" / "No" from the response's first word (case and punctuation ignored), else
  the response unchanged (then it is wrong, as in the official scorer)."""
  match = _WORD.search(response)
  word = match.group(0).lower() if match else ""
  return {"yes": "Yes", "no": "No"}.get(word, response)


def dimension_of(annotation_type: str) -> str:
  """"discriminative-attribute-state" -> "attribute" (a `DIMENSIONS` entry)."""
  for dimension in DIMENSIONS:
    if dimension in annotation_type:
      return dimension
  raise ValueError(f"AMBER type {annotation_type!r} names none of {DIMENSIONS}")


def _scores(predicted: Sequence[str], truths: Sequence[str]) -> dict[str, float]:
  counts = binary.confusion([p.lower() for p in predicted], truths, positive="no")
  m = binary.metrics(counts)
  correct = sum(p.lower() == t for p, t in zip(predicted, truths))
  precision, recall = round(100 * m["precision"], 1), round(100 * m["recall"], 1)
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return dict(accuracy=correct / len(truths) if truths else 0.0, precision=m["precision"],
              recall=m["recall"], f1=f1 / 100, items=len(truths), **counts)


def score(responses: Sequence[str], truths: Sequence[str],
          dimensions: Sequence[str]) -> dict[str, Any]:
  """AMBER discriminative metrics.

  Args:
    responses: raw model answers.
    truths: "yes" / "no" per item (the annotation's `truth`).
    dimensions: per item, one of `DIMENSIONS` (`dimension_of` maps annotation types).

  Returns:
    accuracy, precision, recall, f1, tp, fp, tn, fn and items overall; `normalized` (how
    many responses were not already exactly "Yes"/"No" but became one) and `unanswered`
    (neither after normalizing); `by_dimension`: the same metrics per dimension.
  """
  if not len(responses) == len(truths) == len(dimensions):
    raise ValueError(f"{len(responses)} responses, {len(truths)} truths and "
                     f"{len(dimensions)} dimensions")
  bad = sorted(set(truths) - {"yes", "no"}) + sorted(set(dimensions) - set(DIMENSIONS))
  if bad:
    raise ValueError(f"AMBER truths must be 'yes'/'no' and dimensions in {DIMENSIONS}; "
                     f"got {bad}")
  predicted = [normalize(r) for r in responses]
  result = _scores(predicted, truths)
  result["normalized"] = sum(p in ("Yes", "No") and p != r
                             for p, r in zip(predicted, responses))
  result["unanswered"] = sum(p not in ("Yes", "No") for p in predicted)
  result["by_dimension"] = {
      d: _scores([p for p, dd in zip(predicted, dimensions) if dd == d],
                 [t for t, dd in zip(truths, dimensions) if dd == d])
      for d in DIMENSIONS if d in dimensions}
  return result


def read_discriminative(query_file: str | pathlib.Path, annotations_file: str | pathlib.Path,
                        on_error: Optional[Callable[[ValueError], None]] = None
                        ) -> list[dict[str, Any]]:
  """The discriminative items: `{"id", "image", "query", "truth", "dimension"}` each, from
  the AMBER repository's two files. An item without its annotation is a ValueError,
  raised, or passed to `on_error` and the item left out."""
  queries = json.loads(pathlib.Path(query_file).read_text())
  annotations = json.loads(pathlib.Path(annotations_file).read_text())
  by_id = {int(a["id"]): a for a in annotations}
  items = []
  for query in queries:
    annotation = by_id.get(int(query["id"]))
    if annotation is None or "truth" not in annotation:
      error = ValueError(f"{annotations_file}: no discriminative annotation (with 'truth') "
                         f"for query id {query['id']} of {query_file}")
      if on_error is None:
        raise error
      on_error(error)
      continue
    items.append(dict(id=int(query["id"]), image=query["image"], query=query["query"],
                      truth=annotation["truth"], dimension=dimension_of(annotation["type"])))
  return items
