"""Paired bootstrap of metric differences: the pooled metrics equal `scoring.aggregate`,
the bootstrap equals a plain loop over `aggregate`, and the intervals cover the truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhfv_jax.demo import scoring, stats


def _scores(rng, n, hallucination=0.2):
  out = []
  for _ in range(n):
    mentions = int(rng.integers(0, 5))
    hallucinated = int(rng.binomial(mentions, hallucination))
    present = mentions - hallucinated
    objects = int(rng.integers(1, 5))
    claim = rng.random()
    out.append(scoring.ResponseScore(
        mentions=mentions, hallucinated=hallucinated,
        attribute_errors=int(rng.integers(0, present + 1)),
        covered=min(present, objects), objects=objects,
        count_correct=None if claim < 0.3 else bool(claim < 0.8),
        words=int(rng.integers(5, 40))))
  return out


def test_pooled_metrics_equal_aggregate():
  scores = _scores(np.random.default_rng(0), 60)
  sums = stats.count_table(scores).sum(0)
  expected = scoring.aggregate(scores)
  for metric in stats.RATIOS:
    np.testing.assert_allclose(stats.metric_from_sums(sums, metric), expected[metric])
  assert set(stats.RATIOS) == set(scoring.METRIC_NAMES)
  # Undefined stays undefined: no mention at all gives CHAIR_i NaN, as in aggregate.
  silent = [scoring.ResponseScore(0, 0, 0, 0, 2, None, 3)]
  assert math.isnan(stats.metric_from_sums(stats.count_table(silent).sum(0), "chair_i"))


@pytest.mark.parametrize("two_level", [True, False])
@pytest.mark.parametrize("metric", ["chair_s", "chair_i", "recall", "count_accuracy"])
def test_bootstrap_equals_a_plain_loop_over_aggregate(metric, two_level):
  """The same draws, each replicate through scoring.aggregate on the resampled responses:
  two levels (seeds drawn with replacement, then each drawn seed's scenes) or one (each
  seed's scenes)."""
  rng = np.random.default_rng(1)
  a = [_scores(rng, 40, 0.1), _scores(rng, 40, 0.15), _scores(rng, 40, 0.2)]
  b = [_scores(rng, 40, 0.3), _scores(rng, 40, 0.25), _scores(rng, 40, 0.2)]
  got = stats.paired_difference([stats.count_table(s) for s in a],
                                [stats.count_table(s) for s in b], metric, resamples=200,
                                seed=5, resample_seeds=two_level)
  draws = np.random.default_rng(5)

  def difference(seed, row):
    return (scoring.aggregate([a[seed][i] for i in row])[metric]
            - scoring.aggregate([b[seed][i] for i in row])[metric])

  if two_level:
    drawn_seeds = draws.integers(0, 3, size=(200, 3))
    values = np.zeros((200, 3))
    for seed in range(3):
      slots = np.argwhere(drawn_seeds == seed)
      for (r, j), row in zip(slots, draws.integers(0, 40, size=(len(slots), 40))):
        values[r, j] = difference(seed, row)
    combined = values.mean(axis=1)
  else:
    combined = np.mean([[difference(seed, row)
                         for row in draws.integers(0, 40, size=(200, 40))]
                        for seed in range(3)], axis=0)
  combined = combined[np.isfinite(combined)]
  per_seed = [scoring.aggregate(x)[metric] - scoring.aggregate(y)[metric] for x, y in zip(a, b)]
  np.testing.assert_allclose(got.per_seed, per_seed)
  np.testing.assert_allclose(got.estimate, np.mean(per_seed))
  np.testing.assert_allclose([got.low, got.high], np.percentile(combined, [2.5, 97.5]))


def test_established_needs_the_interval_and_every_seed():
  assert stats.Difference(0.05, 0.01, 0.09, (0.04, 0.06, 0.05)).established
  assert not stats.Difference(0.05, -0.01, 0.09, (0.04, 0.06, 0.05)).established
  assert not stats.Difference(0.05, 0.01, 0.09, (0.14, -0.01, 0.02)).established


def test_identical_models_differ_by_exactly_zero():
  table = stats.count_table(_scores(np.random.default_rng(2), 50))
  d = stats.paired_difference([table], [table], "chair_i", resamples=100)
  assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0)
  assert not d.excludes_zero and not d.same_sign_every_seed


def test_unpaired_tables_are_refused():
  rng = np.random.default_rng(3)
  with pytest.raises(ValueError, match="unpaired"):
    stats.paired_difference([stats.count_table(_scores(rng, 5))],
                            [stats.count_table(_scores(rng, 6))], "chair_s")
  with pytest.raises(ValueError, match="same number"):
    stats.paired_difference([], [], "chair_s")


def test_interval_covers_the_true_difference_about_95_percent_of_the_time():
  """Paired Bernoulli responses (a hallucinates with p 0.3, b with 0.2, correlated through
  the scene): over 200 simulated evaluations of 150 scenes, the 95% interval of CHAIR_s(a)
  − CHAIR_s(b) covers the true 0.1 in 88-99% of them."""
  rng = np.random.default_rng(4)
  covered = 0
  for trial in range(200):
    hard = rng.random(150) < 0.5   # scenes both models find hard
    p_a, p_b = np.where(hard, 0.45, 0.15), np.where(hard, 0.35, 0.05)
    u = rng.random(150)            # one uniform per scene: correlated outcomes
    tables = []
    for p in (p_a, p_b):
      table = np.zeros((150, len(stats.COUNT_FIELDS)))
      table[:, stats.COUNT_FIELDS.index("responses")] = 1
      table[:, stats.COUNT_FIELDS.index("any_hallucinated")] = u < p
      tables.append(table)
    d = stats.paired_difference([tables[0]], [tables[1]], "chair_s", resamples=400,
                                seed=trial, resample_seeds=False)
    covered += d.low <= 0.1 <= d.high
  assert 0.88 <= covered / 200 <= 0.99, covered


def test_interval_of_one_model_brackets_its_value():
  rng = np.random.default_rng(6)
  tables = [stats.count_table(_scores(rng, 80)) for _ in range(3)]
  d = stats.interval(tables, "chair_i", resamples=300)
  per_seed = [stats.metric_from_sums(t.sum(0), "chair_i") for t in tables]
  np.testing.assert_allclose(d.per_seed, per_seed)
  assert d.estimate == pytest.approx(np.mean(per_seed)) and d.low < d.estimate < d.high
