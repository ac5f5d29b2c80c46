"""AMBER discriminative (Wang et al. 2023, junyangwang0410/AMBER `inference.py`).

`data/annotations.json` holds one entry per item, in id order (inference.py looks an id up
at position id - 1; `read_discriminative` by id, the same on that file): ids 1-1004 are
generative (`"type": "generative"`, `truth`/`hallu` word lists), ids >= 1005
discriminative, with a `truth` of "yes"/"no" and one of these types:

  discriminative-hallucination                   existence (4,924 items, all truth "no")
  discriminative-attribute-state|number|action   attribute (state / number / action)
  any other ("discriminative-relation", "relation")  relation

`data/query/query_discriminative.json` holds `{"id", "image", "query"}`.

**Official figures** (`results["official"]`) are what `inference.py` prints, figure for
figure: a response counts only if it is exactly "Yes" or "No" (anything else is wrong);
**"No" is the positive class** (the model says an object/attribute/relation is absent).
The official arithmetic is kept as is: every denominator is a counter that starts at 0.001
(`data/metrics.txt`) and grows by 1 per item, the attribute aggregate sums the three
attribute counters (0.003 to start); accuracy, precision and recall are rounded to 0.1
percent; F1 = 2PR / (P + R + 0.0001) from the rounded P and R (existence: + 0.001), rounded
to 0.1 percent. Blocks: overall, existence, attribute, state, number, action, relation.
Published numbers use these figures.

**Normalized figures** (`results["normalized"]`): models say "Yes." or "no, there is not",
which the official scorer counts wrong; here each response is first reduced to "Yes"/"No"
by its first word (punctuation stripped, case folded), then scored with the same official
arithmetic. `changed_by_normalization` counts the responses this turned into "Yes"/"No";
what stays neither is wrong in both.

Published: LLaVA-1.5-7B accuracy 73.5, F1 77.6 (cited by RLAIF-V). The generative half
needs spaCy word vectors that cannot be installed offline: not implemented.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
from typing import Any, Callable, Optional, Sequence

GENERATIVE_TYPE = "generative"
EXISTENCE_TYPE = "discriminative-hallucination"
ATTRIBUTE_TYPES = {"discriminative-attribute-state": "state",
                   "discriminative-attribute-number": "number",
                   "discriminative-attribute-action": "action"}
DIMENSIONS = ("existence", "attribute", "relation")
# The official script's blocks, in its printing order (after the overall one).
BLOCKS = ("overall", "existence", "attribute", "state", "number", "action", "relation")
_BLOCK_KINDS = {"overall": ("existence", "state", "number", "action", "relation"),
                "existence": ("existence",), "attribute": ("state", "number", "action"),
                "state": ("state",), "number": ("number",), "action": ("action",),
                "relation": ("relation",)}
FIRST_DISCRIMINATIVE_ID = 1005
_COUNTER_START = 0.001  # data/metrics.txt
_WORD = re.compile(r"[A-Za-z]+")


def normalize(response: str) -> str:
  """"Yes" / "No" from the response's first word (case and punctuation ignored), else
  the response unchanged (then it is wrong, as in the official scorer)."""
  match = _WORD.search(response)
  word = match.group(0).lower() if match else ""
  return {"yes": "Yes", "no": "No"}.get(word, response)


def kind_of(annotation_type: str) -> str:
  """The official scorer's counter for a discriminative type: "existence", "state",
  "number", "action" or (any other type) "relation"."""
  if annotation_type == GENERATIVE_TYPE:
    raise ValueError("AMBER type 'generative' is not a discriminative item")
  if annotation_type == EXISTENCE_TYPE:
    return "existence"
  return ATTRIBUTE_TYPES.get(annotation_type, "relation")


def dimension_of(annotation_type: str) -> str:
  """"discriminative-attribute-state" -> "attribute" (a `DIMENSIONS` entry)."""
  kind = kind_of(annotation_type)
  return "attribute" if kind in ATTRIBUTE_TYPES.values() else kind


@functools.lru_cache(maxsize=None)
def _counter(increments: int) -> float:
  """A metrics.txt denominator after `increments` items: 0.001, then += 1 per item.

  Added step by step as the official script does: for some counts the float differs in
  the last bit from 0.001 + increments, and the figures are to be the script's exactly.
  """
  value = _COUNTER_START
  for _ in range(increments):
    value += 1
  return value


def _percent(numerator: int, counts: Sequence[int]) -> float:
  """round(numerator / (sum of the counters) * 100, 1), as inference.py computes it."""
  return round(numerator / sum(_counter(c) for c in counts) * 100, 1)


def _f1(precision: float, recall: float, epsilon: float) -> float:
  """The official F1 from precision and recall in percent, already rounded."""
  return round(2 * (precision / 100) * (recall / 100)
               / ((precision / 100) + (recall / 100) + epsilon) * 100, 1)


def _tally(answers: Sequence[str], truths: Sequence[str], kinds: Sequence[str]
           ) -> dict[str, dict[str, int]]:
  """Per kind: items, correct (exact "Yes"/"No" matching the truth), unanswered (neither),
  and TP / FP / TN / FN with exact "No" the positive prediction."""
  tally = {k: dict(items=0, correct=0, unanswered=0, tp=0, fp=0, tn=0, fn=0)
           for k in _BLOCK_KINDS["overall"]}
  for answer, truth, kind in zip(answers, truths, kinds):
    t = tally[kind]
    t["items"] += 1
    t["correct"] += answer == ("Yes" if truth == "yes" else "No")
    t["unanswered"] += answer not in ("Yes", "No")
    if truth == "no":
      t["tp" if answer == "No" else "fn"] += 1
    else:
      t["fp" if answer == "No" else "tn"] += 1
  return tally


def _block(tally: dict[str, dict[str, int]], kinds: Sequence[str], epsilon: float
           ) -> dict[str, Any]:
  """One printed block: the official figures (as fractions: 68.7 -> 0.687) and counts."""
  counts = {key: sum(tally[k][key] for k in kinds) for key in tally[kinds[0]]}
  # The counters inference.py keeps per kind; a block over several kinds sums them.
  accuracy = _percent(counts["correct"], [tally[k]["items"] for k in kinds])
  precision = _percent(counts["tp"], [tally[k]["tp"] + tally[k]["fp"] for k in kinds])
  recall = _percent(counts["tp"], [tally[k]["tp"] + tally[k]["fn"] for k in kinds])
  f1 = _f1(precision, recall, epsilon)
  return dict(accuracy=round(accuracy / 100, 3), precision=round(precision / 100, 3),
              recall=round(recall / 100, 3), f1=round(f1 / 100, 3), **counts)


def official_blocks(answers: Sequence[str], truths: Sequence[str], kinds: Sequence[str]
                    ) -> dict[str, dict[str, Any]]:
  """Every block inference.py prints (`BLOCKS`), scored by exact match on `answers`.

  The overall block counts every item in one counter, as the official script does (not
  the sum of the per-kind counters); an empty block scores 0.0, as the 0.001 counters make
  it print.
  """
  tally = _tally(answers, truths, kinds)
  blocks = {}
  for name in BLOCKS:
    epsilon = 0.001 if name == "existence" else 0.0001
    if name == "overall":
      whole = {key: sum(t[key] for t in tally.values()) for key in tally["existence"]}
      blocks[name] = _block({"all": whole}, ["all"], epsilon)
    else:
      blocks[name] = _block(tally, _BLOCK_KINDS[name], epsilon)
  return blocks


def score(responses: Sequence[str], truths: Sequence[str],
          types: Sequence[str]) -> dict[str, Any]:
  """AMBER discriminative metrics, official and normalized.

  Args:
    responses: raw model answers.
    truths: "yes" / "no" per item (the annotation's `truth`).
    types: per item, the annotation's `type` string (`kind_of` maps it).

  Returns:
    `official`: per block of `BLOCKS` ("overall", "existence", "attribute", "state",
    "number", "action", "relation"): accuracy, precision, recall, f1 (fractions of what
    inference.py prints: 68.7 -> 0.687), items, correct, unanswered, tp, fp, tn, fn;
    `normalized`: the same on the responses normalized to Yes/No (`normalize`);
    `changed_by_normalization`: responses not exactly "Yes"/"No" that became one;
    `items`; and accuracy, precision, recall, f1: the official overall figures.
  """
  if not len(responses) == len(truths) == len(types):
    raise ValueError(f"{len(responses)} responses, {len(truths)} truths and "
                     f"{len(types)} types")
  bad = sorted(set(truths) - {"yes", "no"})
  if bad:
    raise ValueError(f"AMBER truths must be 'yes'/'no'; got {bad}")
  kinds = [kind_of(t) for t in types]
  normalized = [normalize(r) for r in responses]
  official = official_blocks(responses, truths, kinds)
  headline = {k: official["overall"][k] for k in ("accuracy", "precision", "recall", "f1")}
  return dict(headline, official=official,
              normalized=official_blocks(normalized, truths, kinds),
              changed_by_normalization=sum(n in ("Yes", "No") and n != r
                                           for n, r in zip(normalized, responses)),
              items=len(responses))


def read_discriminative(query_file: str | pathlib.Path, annotations_file: str | pathlib.Path,
                        on_error: Optional[Callable[[ValueError], None]] = None
                        ) -> list[dict[str, Any]]:
  """The discriminative items, `{"id", "image", "query", "truth", "type", "dimension"}`
  each, from the AMBER repository's two files as they are.

  A query outside the discriminative id range (>= 1005), or without a discriminative
  annotation (a non-generative type and a "yes"/"no" truth), is a ValueError, raised, or
  passed to `on_error` and the item left out.
  """
  queries = json.loads(pathlib.Path(query_file).read_text())
  annotations = json.loads(pathlib.Path(annotations_file).read_text())
  by_id = {int(a["id"]): a for a in annotations}
  items = []
  for query in queries:
    query_id = int(query["id"])
    annotation = by_id.get(query_id, {})
    problem = None
    if query_id < FIRST_DISCRIMINATIVE_ID:
      problem = (f"query id {query_id} of {query_file} is in AMBER's generative range "
                 f"(ids 1-{FIRST_DISCRIMINATIVE_ID - 1})")
    elif annotation.get("type", GENERATIVE_TYPE) == GENERATIVE_TYPE or annotation.get(
        "truth") not in ("yes", "no"):
      problem = (f"{annotations_file}: no discriminative annotation (a non-generative "
                 f"type, truth 'yes'/'no') for query id {query_id} of {query_file}")
    if problem:
      if on_error is None:
        raise ValueError(problem)
      on_error(ValueError(problem))
      continue
    items.append(dict(id=query_id, image=query["image"], query=query["query"],
                      truth=annotation["truth"], type=annotation["type"],
                      dimension=dimension_of(annotation["type"])))
  return items
