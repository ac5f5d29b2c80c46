"""Paired bootstrap of the difference between two models scored on the same items.

Both models answer the same items, so a comparison is paired: resampling the items (with
replacement) and recomputing both models' metrics on the same resample keeps the
item-to-item variation, which both share, out of the difference.

Items come in groups (the demo's seeds, POPE's splits): each group's items are resampled
independently, and each replicate's difference is the mean over groups of the per-group
differences, so the interval is of the groups' mean, the figure a table reports (POPE's
mean F1 over its splits). The interval is the (alpha/2, 1 − alpha/2) percentiles of the
replicates.

A metric is a function of summed per-item counts (`statistic`: the counts of a group
summed over its items -> the metric, NaN where undefined), so a replicate costs one
gather and a sum. The demo (`rlhfv_jax.demo.stats`) and `rlhfv_jax.evals.compare` both
use this.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import numpy as np

# Index entries drawn per step: bounds the memory of a replicate batch on large groups
# (AMBER's 15,000 items); smaller problems draw all replicates at once.
_DRAW_BUDGET = 1 << 22


@dataclasses.dataclass(frozen=True)
class Difference:
  """metric(a) − metric(b), averaged over groups, with a bootstrap interval.

  Attributes:
    estimate: the mean over groups of the per-group differences on all items.
    low, high: the (alpha/2, 1 − alpha/2) percentiles of the bootstrap replicates.
    per_group: each group's difference on all its items.
  """

  estimate: float
  low: float
  high: float
  per_group: tuple[float, ...]

  @property
  def excludes_zero(self) -> bool:
    """The interval lies strictly on one side of 0."""
    return self.low > 0 or self.high < 0


def _replicates(table: np.ndarray, index: list[np.ndarray],
                statistic: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """The statistic of `table`'s rows resampled by each row of each index block."""
  return np.concatenate([statistic(table[block].sum(1)) for block in index])


def paired_difference(a: Sequence[np.ndarray], b: Optional[Sequence[np.ndarray]],
                      statistic: Callable[[np.ndarray], np.ndarray], *,
                      resamples: int = 2000, alpha: float = 0.05, seed: int = 0
                      ) -> Difference:
  """The paired bootstrap of statistic(a) − statistic(b) (module docstring).

  Args:
    a, b: per group, a [items, counts] table of each model's per-item counts, the same
      items in the same order on both sides. b = None gives statistic(a) itself with its
      interval.
    statistic: summed counts [..., counts] -> the metric [...] (NaN where undefined).
    resamples: bootstrap replicates.
    alpha: 1 − the interval's coverage.
    seed: the resampling seed (one resample of a group's items serves both models).

  Returns:
    The difference; NaN estimate and bounds where the metric is undefined in every
    replicate.
  """
  against = b is not None
  b = b if against else a
  if len(a) != len(b) or not a:
    raise ValueError(f"need the same number (>= 1) of groups on both sides, got {len(a)} "
                     f"and {len(b)}")
  rng = np.random.default_rng(seed)
  per_group, replicates = [], []
  for table_a, table_b in zip(a, b):
    if table_a.shape != table_b.shape:
      raise ValueError(f"unpaired tables: {table_a.shape} vs {table_b.shape} (the same "
                       "items in the same order are needed)")
    n = len(table_a)
    step = max(1, min(resamples, _DRAW_BUDGET // max(n, 1)))
    index = [rng.integers(0, n, size=(min(step, resamples - start), n))
             for start in range(0, resamples, step)]
    full = statistic(table_a.sum(0))
    reps = _replicates(table_a, index, statistic)
    if against:
      full = full - statistic(table_b.sum(0))
      reps = reps - _replicates(table_b, index, statistic)
    per_group.append(float(full))
    replicates.append(reps)
  combined = np.mean(replicates, axis=0)
  finite = combined[np.isfinite(combined)]
  if not finite.size:
    return Difference(math.nan, math.nan, math.nan, tuple(per_group))
  low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return Difference(float(np.mean(per_group)), float(low), float(high), tuple(per_group))


def interval(a: Sequence[np.ndarray], statistic: Callable[[np.ndarray], np.ndarray],
             **kwargs) -> Difference:
  """statistic(a) (the mean over groups) with its bootstrap interval:
  `paired_difference` against nothing."""
  return paired_difference(a, None, statistic, **kwargs)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator elementwise, NaN where the denominator is 0 (undefined)."""
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1),
                    np.nan)
