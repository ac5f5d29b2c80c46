"""Paired bootstrap of the difference between two models scored on the same items.

Both models answer the same items, so a comparison is paired: resampling the items (with
replacement) and recomputing both models' metrics on the same resample keeps the
item-to-item variation, which both share, out of the difference.

Items come in groups (the demo's seeds, POPE's splits): each group's items are resampled
independently, and each replicate's difference is the mean over groups of the per-group
differences, so the interval is of the groups' mean, the figure a table reports (POPE's
mean F1 over its splits). The interval is the (alpha/2, 1 − alpha/2) percentiles of the
replicates. That interval treats the groups as fixed: right for POPE's three splits, too
narrow where the groups are themselves draws (the demo's training seeds: another seed is
another trajectory).

With ``resample_groups`` the bootstrap has two levels, as the groups' sampling calls
for: each replicate first draws G groups with replacement from the G groups, then
resamples each drawn group's items independently (a group drawn twice gets two item
resamples), and its difference is the mean over the drawn groups. The interval then
covers the variation between groups as well as within them. With few groups it is
still narrow (the bootstrap's variance of a mean of G draws is (G − 1)/G of the
plug-in one, and a percentile interval ignores the t-distribution's tails): the tests
measure its coverage for 3 and 8 groups, and `rlhfv_jax.demo.stats` pairs it with "every
group agrees".

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


def _item_resamples(rng: np.random.Generator, table_a: np.ndarray,
                    table_b: Optional[np.ndarray], count: int,
                    statistic: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """`count` replicates of statistic(a) − statistic(b) (or statistic(a) for b None) on
  resamples of the group's items, one resample serving both models."""
  n = len(table_a)
  step = max(1, min(count, _DRAW_BUDGET // max(n, 1)))
  index = [rng.integers(0, n, size=(min(step, count - start), n))
           for start in range(0, count, step)]
  reps = _replicates(table_a, index, statistic)
  if table_b is not None:
    reps = reps - _replicates(table_b, index, statistic)
  return reps


def paired_difference(a: Sequence[np.ndarray], b: Optional[Sequence[np.ndarray]],
                      statistic: Callable[[np.ndarray], np.ndarray], *,
                      resamples: int = 2000, alpha: float = 0.05, seed: int = 0,
                      resample_groups: bool = False) -> Difference:
  """The paired bootstrap of statistic(a) − statistic(b) (module docstring).

  Args:
    a, b: per group, a [items, counts] table of each model's per-item counts, the same
      items in the same order on both sides. b = None gives statistic(a) itself with its
      interval.
    statistic: summed counts [..., counts] -> the metric [...] (NaN where undefined).
    resamples: bootstrap replicates.
    alpha: 1 − the interval's coverage.
    seed: the resampling seed (one resample of a group's items serves both models).
    resample_groups: the two-level bootstrap (module docstring): groups drawn with
      replacement, then items within each drawn group.

  Returns:
    The difference; NaN estimate and bounds where the metric is undefined in every
    replicate.
  """
  against = b is not None
  b_tables = b if against else a
  if len(a) != len(b_tables) or not a:
    raise ValueError(f"need the same number (>= 1) of groups on both sides, got {len(a)} "
                     f"and {len(b_tables)}")
  for table_a, table_b in zip(a, b_tables):
    if table_a.shape != table_b.shape:
      raise ValueError(f"unpaired tables: {table_a.shape} vs {table_b.shape} (the same "
                       "items in the same order are needed)")
  rng = np.random.default_rng(seed)
  pairs = [(table_a, table_b if against else None) for table_a, table_b in zip(a, b_tables)]
  per_group = [float(statistic(ta.sum(0)) - (statistic(tb.sum(0)) if against else 0.0))
               for ta, tb in pairs]
  if resample_groups:
    # Level 1: which groups each replicate draws (slot j of replicate r); level 2: an
    # independent item resample for every (replicate, slot), drawn group by group.
    groups = rng.integers(0, len(pairs), size=(resamples, len(pairs)))
    values = np.empty(groups.shape)
    for g, (table_a, table_b) in enumerate(pairs):
      drawn = groups == g
      values[drawn] = _item_resamples(rng, table_a, table_b, int(drawn.sum()), statistic)
    combined = values.mean(axis=1)
  else:
    combined = np.mean([_item_resamples(rng, ta, tb, resamples, statistic)
                        for ta, tb in pairs], axis=0)
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
