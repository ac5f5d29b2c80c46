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


def test_all_invalid_batches_up_to_num_batches():
  batches = list(fixed_size_batches("abc", 2, num_batches=3))
  assert [b.items for b in batches] == [list("ab"), list("cc"), list("aa")]
  assert [b.num_valid for b in batches] == [2, 1, 0]
  (only,) = fixed_size_batches([], 2, num_batches=1, filler="z")
  assert only.items == ["z", "z"] and only.num_valid == 0
  with pytest.raises(ValueError, match="pass filler"):
    list(fixed_size_batches([], 2, num_batches=1))
  with pytest.raises(ValueError, match="more than num_batches=1"):
    list(fixed_size_batches("abc", 2, num_batches=1))
