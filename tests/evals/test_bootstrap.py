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
