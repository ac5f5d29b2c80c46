"""Paired differences between two models with bootstrap confidence intervals.

Every model of the demo describes the same held-out scenes, so a comparison is paired:
resampling the scenes (with replacement) and recomputing both models' metrics on the same
resample keeps the scene-to-scene variation, which both share, out of the difference.

Every model is trained once per seed (the base models included), so a seed is a
training run: its own initialisation, data order, VQA data, feedback and sampling. The
interval has two levels (`rlhfv_jax.evals.bootstrap`, ``resample_groups``): each
replicate draws the seeds with replacement, then resamples each drawn seed's scenes, and
its difference is the mean over the drawn seeds. It covers what another training run
would do as well as which scenes were drawn. With 3 seeds a bootstrap over seeds is
coarse (tests/demo/test_stats.py measures its coverage), so a direction is called
*established* only when the interval excludes 0 and every seed alone has the same sign
(`Difference.established`).

A metric is a ratio of pooled counts (`scoring.aggregate`'s definitions), computed from
the per-scene counts in `COUNT_FIELDS`, so a replicate costs one gather and a sum. The
resampling is `rlhfv_jax.evals.bootstrap`'s (shared with `rlhfv_jax.evals.compare`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from rlhfv_jax.demo import scoring
from rlhfv_jax.evals import bootstrap

# Per-response counts; each metric is sum(numerator) / sum(denominator) over responses.
COUNT_FIELDS = ("responses", "mentions", "hallucinated", "any_hallucinated", "present",
                "attribute_errors", "covered", "objects", "claims", "claims_correct", "words",
                "co_occurring")
RATIOS: dict[str, tuple[str, str]] = {
    "chair_s": ("any_hallucinated", "responses"),
    "chair_i": ("hallucinated", "mentions"),
    "recall": ("covered", "objects"),
    "attribute_error_rate": ("attribute_errors", "present"),
    "count_accuracy": ("claims_correct", "claims"),
    "avg_words": ("words", "responses"),
    "co_occurrence_share": ("co_occurring", "hallucinated"),
}


def count_table(scores: Sequence[scoring.ResponseScore]) -> np.ndarray:
  """[responses, len(COUNT_FIELDS)] float64 counts of each response."""
  rows = [(1, s.mentions, s.hallucinated, s.hallucinated > 0, s.mentions - s.hallucinated,
           s.attribute_errors, s.covered, s.objects, s.count_correct is not None,
           bool(s.count_correct), s.words, s.co_occurring) for s in scores]
  return np.asarray(rows, np.float64).reshape(len(rows), len(COUNT_FIELDS))


def metric_from_sums(sums: np.ndarray, metric: str) -> np.ndarray:
  """A metric from summed counts [..., len(COUNT_FIELDS)]; NaN where undefined."""
  numerator, denominator = (sums[..., COUNT_FIELDS.index(f)] for f in RATIOS[metric])
  return bootstrap.ratio(numerator, denominator)


@dataclasses.dataclass(frozen=True)
class Difference(bootstrap.Difference):
  """metric(a) − metric(b), averaged over seeds, with a bootstrap interval: the groups of
  `bootstrap.Difference` are the seeds.

  Attributes:
    estimate: the mean over seeds of the per-seed differences on all scenes.
    low, high: the (alpha/2, 1 − alpha/2) percentiles of the bootstrap replicates.
    per_group: each seed's difference on all scenes (also `per_seed`).
  """

  @property
  def per_seed(self) -> tuple[float, ...]:
    return self.per_group

  @property
  def same_sign_every_seed(self) -> bool:
    """Every seed's difference has the estimate's (non-zero) sign."""
    sign = np.sign(self.estimate)
    return bool(sign) and all(np.sign(d) == sign for d in self.per_seed)

  @property
  def established(self) -> bool:
    """The direction holds: the (two-level) interval excludes 0 and every seed agrees."""
    return self.excludes_zero and self.same_sign_every_seed


def paired_difference(a: Sequence[np.ndarray], b: Optional[Sequence[np.ndarray]],
                      metric: str, *, resamples: int = 2000, alpha: float = 0.05,
                      seed: int = 0, resample_seeds: bool = True) -> Difference:
  """The paired bootstrap of metric(a) − metric(b) (module docstring;
  `rlhfv_jax.evals.bootstrap` resamples).

  Args:
    a, b: per seed, the `count_table` of each model's responses to the same scenes in
      the same order.
      b = None gives metric(a) itself with its interval (`interval`).
    metric: a key of `RATIOS`.
    resamples: bootstrap replicates.
    alpha: 1 − the interval's coverage.
    seed: the resampling seed.
    resample_seeds: the two-level bootstrap (seeds, then scenes); False resamples the
      scenes of the seeds run only (an interval for these training runs, not for
      another one).

  Returns:
    The difference; NaN fields where a metric is undefined in every replicate.
  """
  d = bootstrap.paired_difference(a, b, lambda sums: metric_from_sums(sums, metric),
                                  resamples=resamples, alpha=alpha, seed=seed,
                                  resample_groups=resample_seeds)
  return Difference(d.estimate, d.low, d.high, d.per_group)


def interval(a: Sequence[np.ndarray], metric: str, **kwargs) -> Difference:
  """metric(a) (the mean over seeds) with its bootstrap interval: `paired_difference`
  against nothing."""
  return paired_difference(a, None, metric, **kwargs)
