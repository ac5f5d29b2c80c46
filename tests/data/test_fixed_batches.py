"""Ordered fixed-size batches with a validity mask."""

import numpy as np
import pytest

from rlhfv_jax.data.fixed_batches import fixed_size_batches


def test_order_padding_and_mask():
  batches = list(fixed_size_batches(iter("abcdefg"), 3))  # any iterable, consumed lazily
  assert [b.items for b in batches] == [list("abc"), list("def"), list("ggg")]
  assert [b.start for b in batches] == [0, 3, 6]
  np.testing.assert_array_equal(batches[-1].valid, [True, False, False])
  assert [b.num_valid for b in batches] == [3, 3, 1]
  # A per-row output keeps only the real rows: nothing lost, nothing doubled.
  assert sum((b.real(b.items) for b in batches), []) == list("abcdefg")
  assert batches[-1].real(np.arange(3)) == [0]


def test_exact_multiple_and_empty():
  assert [b.num_valid for b in fixed_size_batches(range(4), 2)] == [2, 2]
  assert list(fixed_size_batches([], 2)) == []
  with pytest.raises(ValueError, match="batch_size=0"):
    list(fixed_size_batches([1], 0))
