"""The counting core of CHAIR (Rohrbach et al. 2018), shared by Object HalBench (`objhal`,
COCO vocabulary) and the embedded demo's metrics (shape-world vocabulary): one piece of
code, two vocabularies. Each response is reduced to `MentionCounts`; `chair_metrics`
pools them.

  CHAIR_s       = responses with >= 1 hallucinated mention / all responses
  response_hall = responses with >= 1 hallucinated mention / responses with >= 1 mention
                  (Object HalBench's "Resp", CHAIRs_refine)
  CHAIR_i       = hallucinated mentions / all mentions (duplicates counted; "Ment")
  recall        = Σ distinct ground-truth objects mentioned / Σ ground-truth objects
  avg_words     = mean whitespace-separated words per response

A ratio with an empty denominator is NaN: undefined, not perfect.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class MentionCounts:
  """One response against its image's ground truth.

  Attributes:
    mentions: object mentions (duplicates counted).
    hallucinated: mentions of objects not in the ground truth.
    covered: distinct ground-truth objects the response mentions.
    objects: ground-truth objects of the image.
    words: length in words.
  """

  mentions: int
  hallucinated: int
  covered: int
  objects: int
  words: int


def ratio(numerator: float, denominator: float) -> float:
  return numerator / denominator if denominator else math.nan


def chair_metrics(counts: Sequence[MentionCounts]) -> dict[str, float]:
  """chair_s, response_hall, chair_i, recall, avg_words, num_responses (module docstring)."""
  if not counts:
    raise ValueError("no responses to score")
  hallucinating = sum(c.hallucinated > 0 for c in counts)
  return {
      "chair_s": hallucinating / len(counts),
      "response_hall": ratio(hallucinating, sum(c.mentions > 0 for c in counts)),
      "chair_i": ratio(sum(c.hallucinated for c in counts), sum(c.mentions for c in counts)),
      "recall": ratio(sum(c.covered for c in counts), sum(c.objects for c in counts)),
      "avg_words": sum(c.words for c in counts) / len(counts),
      "num_responses": float(len(counts)),
  }
