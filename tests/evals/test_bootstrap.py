"""The shared paired bootstrap: a plain loop over the same draws, groups averaged, large
groups drawn in steps."""

from __future__ import annotations

import numpy as np
import pytest

from rlhfv_jax.evals import bootstrap


def _accuracy(sums):
  return bootstrap.ratio(sums[..., 0], sums[..., 1])


def _tables(rng, n, p):
  return np.stack([rng.random(n) < p, np.ones(n)], axis=1).astype(np.float64)


@pytest.mark.parametrize("budget", [1 << 22, 90])  # one draw; draws of 2 replicates
def test_equals_a_plain_loop_over_the_same_draws(monkeypatch, budget):
  monkeypatch.setattr(bootstrap, "_DRAW_BUDGET", budget)
  rng = np.random.default_rng(0)
  a = [_tables(rng, 40, 0.7), _tables(rng, 30, 0.6)]
  b = [_tables(rng, 40, 0.5), _tables(rng, 30, 0.5)]
  got = bootstrap.paired_difference(a, b, _accuracy, resamples=100, seed=3)
  draws, replicates = np.random.default_rng(3), []
  for table_a, table_b in zip(a, b):
    n = len(table_a)
    step = min(100, budget // n)
    index = np.concatenate([draws.integers(0, n, size=(min(step, 100 - s), n))
                            for s in range(0, 100, step)])
    replicates.append([table_a[row, 0].mean() - table_b[row, 0].mean() for row in index])
  per_group = [t[:, 0].mean() - u[:, 0].mean() for t, u in zip(a, b)]
  np.testing.assert_allclose(got.per_group, per_group)
  np.testing.assert_allclose(got.estimate, np.mean(per_group))  # the groups' mean
  np.testing.assert_allclose([got.low, got.high],
                             np.percentile(np.mean(replicates, axis=0), [2.5, 97.5]))


def test_a_model_against_itself_differs_by_exactly_zero():
  table = _tables(np.random.default_rng(1), 50, 0.5)
  d = bootstrap.paired_difference([table, table], [table, table], _accuracy, resamples=50)
  assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0) and not d.excludes_zero


def test_undefined_everywhere_is_nan_and_unpaired_is_refused():
  empty = np.zeros((5, 2))
  d = bootstrap.interval([empty], _accuracy, resamples=10)
  assert np.isnan(d.estimate) and np.isnan(d.low)
  with pytest.raises(ValueError, match="unpaired"):
    bootstrap.paired_difference([np.ones((3, 2))], [np.ones((4, 2))], _accuracy)


@pytest.mark.parametrize("budget", [1 << 22, 90])
def test_two_levels_equal_a_plain_loop_over_the_same_draws(monkeypatch, budget):
  """Groups drawn with replacement per replicate, then each drawn (replicate, slot) its
  own item resample: the same draws replayed in a loop give the same interval."""
  monkeypatch.setattr(bootstrap, "_DRAW_BUDGET", budget)
  rng = np.random.default_rng(0)
  a = [_tables(rng, 40, 0.7), _tables(rng, 30, 0.6), _tables(rng, 35, 0.4)]
  b = [_tables(rng, 40, 0.5), _tables(rng, 30, 0.5), _tables(rng, 35, 0.45)]
  got = bootstrap.paired_difference(a, b, _accuracy, resamples=100, seed=3,
                                    resample_groups=True)
  draws = np.random.default_rng(3)
  groups = draws.integers(0, 3, size=(100, 3))
  values = np.zeros((100, 3))
  for g, (table_a, table_b) in enumerate(zip(a, b)):
    n, slots = len(table_a), np.argwhere(groups == g)  # row-major, as the draws
    step = max(1, min(len(slots), budget // n))
    index = np.concatenate([draws.integers(0, n, size=(min(step, len(slots) - s), n))
                            for s in range(0, len(slots), step)])
    for (r, j), row in zip(slots, index):
      values[r, j] = table_a[row, 0].mean() - table_b[row, 0].mean()
  per_group = [t[:, 0].mean() - u[:, 0].mean() for t, u in zip(a, b)]
  np.testing.assert_allclose(got.per_group, per_group)
  np.testing.assert_allclose(got.estimate, np.mean(per_group))
  np.testing.assert_allclose([got.low, got.high],
                             np.percentile(values.mean(axis=1), [2.5, 97.5]))
  # A replicate can draw one group twice: the interval is wider than the one-level one.
  one_level = bootstrap.paired_difference(a, b, _accuracy, resamples=100, seed=3)
  assert got.high - got.low > one_level.high - one_level.low


def _coverage(num_groups, trials, resample_groups, spread=0.04, truth=0.1, items=150):
  """How often the 95% interval of rate(a) − rate(b) covers the population difference
  when each group (a training run) has its own true difference, truth + N(0, spread²),
  and its items are paired Bernoulli outcomes (correlated through a uniform per item)."""
  rng = np.random.default_rng(7)
  covered = 0
  for trial in range(trials):
    a, b = [], []
    for _ in range(num_groups):
      hard = rng.random(items) < 0.5
      p_b = np.where(hard, 0.35, 0.05)
      p_a = p_b + truth + spread * rng.standard_normal()
      u = rng.random(items)
      a.append(np.stack([u < p_a, np.ones(items)], axis=1).astype(np.float64))
      b.append(np.stack([u < p_b, np.ones(items)], axis=1).astype(np.float64))
    d = bootstrap.paired_difference(a, b, _accuracy, resamples=400, seed=trial,
                                    resample_groups=resample_groups)
    covered += d.low <= truth <= d.high
  return covered / trials


def test_two_level_interval_covers_a_new_training_run_where_one_level_does_not():
  """Coverage of the population difference (simulated; numbers in docs/results.md): with
  8 groups the two-level interval covers it about 95% of the time (0.85-0.99 asserted),
  the one-level interval, blind to the spread between groups, far less; with 3 groups
  the two-level interval is still too narrow (a bootstrap over 3 draws), which is why the
  demo also asks every group to agree."""
  two_8 = _coverage(8, 200, True)
  one_8 = _coverage(8, 200, False)
  two_3 = _coverage(3, 200, True)
  one_3 = _coverage(3, 200, False)
  print(f"coverage: 8 groups two-level {two_8:.3f} one-level {one_8:.3f}; "
        f"3 groups two-level {two_3:.3f} one-level {one_3:.3f}")
  assert 0.85 <= two_8 <= 0.99, two_8
  assert one_8 <= 0.8 and one_8 < two_8 - 0.1, (one_8, two_8)
  assert one_3 < two_3 < 0.95, (one_3, two_3)
