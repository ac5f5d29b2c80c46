"""CHAIR-style hallucination metrics for descriptions of held-out scenes.

CHAIR (Rohrbach et al. 2018), the object-hallucination metric RLHF-V reports,
checks each object a caption mentions against the image's ground-truth objects:

* CHAIR_s (response level) = |responses with >= 1 hallucinated object| / |responses|
* CHAIR_i (mention level)  = |hallucinated object mentions| / |object mentions|

Here an object's category is its (colour, shape) pair (see `oracle`), so "a blue
square" beside a red one is a hallucinated object. Hallucination rates alone reward
silence — a model that describes nothing has CHAIR 0 — so they are reported with

* object recall  = |ground-truth objects whose type is mentioned| / |ground-truth
  objects| (pooled over responses),
* the attribute error rate (size/position wrong among mentions of present types),
* count accuracy (share of count claims that are right, over responses with one),
* average response length in words,

and, to see where hallucinations come from, the co-occurrence share: of the
hallucinated mentions, those naming the web corpus's companion of a present object
(`corpora.companion_kind`: what the mismatched captions add), the miniature's
"adversarial" negatives in POPE's terms.

Ratios with an empty denominator (e.g. CHAIR_i when nothing is mentioned) are NaN:
undefined, not perfect.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from rlhfv_jax.demo import corpora, oracle, world
from rlhfv_jax.evals import chair

METRIC_NAMES: tuple[str, ...] = ("chair_s", "chair_i", "recall", "attribute_error_rate",
                                 "count_accuracy", "avg_words", "co_occurrence_share")


@dataclasses.dataclass(frozen=True)
class ResponseScore:
  """Counts for one response.

  Attributes:
    mentions: object mentions.
    hallucinated: mentions of object types absent from the scene.
    attribute_errors: mentions of present types with a wrong size or position.
    covered: ground-truth objects whose type some mention names.
    objects: ground-truth objects in the scene.
    count_correct: whether the response's first count claim is right (None: no claim).
    words: length in words.
    repeated: mentions of a present object that an earlier mention already described
      (not part of CHAIR; the oracle labeler deletes them).
    co_occurring: hallucinated mentions whose (colour, shape) is the web corpus's
      companion of an object in the scene.
  """

  mentions: int
  hallucinated: int
  attribute_errors: int
  covered: int
  objects: int
  count_correct: Optional[bool]
  words: int
  repeated: int = 0
  co_occurring: int = 0


def score_response(text: str, scene: world.Scene) -> ResponseScore:
  """Scores one description against its scene.

  Args:
    text: the description.
    scene: the ground truth.

  Returns:
    The counts.
  """
  parsed = oracle.parse_description(text)
  covered: set[world.SceneObject] = set()
  companions = {corpora.companion_kind(o) for o in scene.objects}
  hallucinated = attribute_errors = repeated = co_occurring = 0
  for mention in parsed.mentions:
    grounding = oracle.ground_mention(mention, scene)
    if not grounding.exists:
      hallucinated += 1
      co_occurring += (mention.color, mention.shape) in companions
      continue
    repeated += grounding.referent in covered
    covered.add(grounding.referent)
    if {"size", "position"} & set(grounding.wrong):
      attribute_errors += 1
  claims = parsed.count_claims
  return ResponseScore(
      mentions=len(parsed.mentions), hallucinated=hallucinated,
      attribute_errors=attribute_errors, covered=len(covered), objects=len(scene.objects),
      count_correct=None if not claims else claims[0].count == len(scene.objects),
      words=len(oracle.words_in(text)), repeated=repeated, co_occurring=co_occurring)


def aggregate(scores: Sequence[ResponseScore]) -> dict[str, float]:
  """Pools response scores into the metrics of `METRIC_NAMES` (plus `responses`).

  The CHAIR part is `evals.chair` (the Object HalBench scorer's counting core).

  Args:
    scores: one per response (at least one).

  Returns:
    Metric name -> value; rates are fractions in [0, 1] or NaN when undefined.
  """
  if not scores:
    raise ValueError("no responses to score")
  pooled = chair.chair_metrics([chair.MentionCounts(s.mentions, s.hallucinated, s.covered,
                                                    s.objects, s.words) for s in scores])
  present = sum(s.mentions - s.hallucinated for s in scores)
  claims = [s.count_correct for s in scores if s.count_correct is not None]
  return {
      "chair_s": pooled["chair_s"],
      "chair_i": pooled["chair_i"],
      "recall": pooled["recall"],
      "attribute_error_rate": chair.ratio(sum(s.attribute_errors for s in scores), present),
      "count_accuracy": chair.ratio(sum(claims), len(claims)),
      "avg_words": pooled["avg_words"],
      "co_occurrence_share": chair.ratio(sum(s.co_occurring for s in scores),
                                         sum(s.hallucinated for s in scores)),
      "responses": pooled["num_responses"],
  }


def score_responses(texts: Sequence[str], scenes: Sequence[world.Scene]
                    ) -> list[ResponseScore]:
  """`score_response(texts[i], scenes[i])` for every i (`aggregate` pools them)."""
  if len(texts) != len(scenes):
    raise ValueError(f"{len(texts)} descriptions for {len(scenes)} scenes")
  return [score_response(t, s) for t, s in zip(texts, scenes)]
