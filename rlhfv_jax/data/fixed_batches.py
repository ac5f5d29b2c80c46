"""Ordered fixed-size batches with a validity mask: every batched inference pass uses it.

A compiled function wants one batch shape, a dataset rarely divides by it. Rather than
drop the tail (examples silently never seen) or let every caller pad its own way,
`fixed_size_batches` pads the last batch with repeats of its first item and says which
rows are real (big_vision's ``_mask`` idea): the reference log-prob cache, the
sampler (description sampling, evaluation) and any evaluator run through it, and keep
only rows whose ``valid`` is True.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Generic, Iterable, Iterator, Optional, TypeVar

import numpy as np

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class FixedSizeBatch(Generic[T]):
  """One batch of exactly `batch_size` items.

  Attributes:
    items: the batch's items; rows past `num_valid` repeat `items[0]` (padding).
    valid: [batch_size] bool, True for real rows (always a prefix).
    start: position of `items[0]` in the input order.
  """

  items: list[T]
  valid: np.ndarray
  start: int

  @property
  def num_valid(self) -> int:
    return int(self.valid.sum())

  def real(self, rows: Iterable) -> list:
    """The entries of a per-row output (e.g. a model's [batch_size, ...] result) that
    belong to real items, in order."""
    return list(itertools.islice(rows, self.num_valid))


def fixed_size_batches(items: Iterable[T], batch_size: int, *, num_batches: Optional[int] = None,
                       filler: Optional[T] = None) -> Iterator[FixedSizeBatch[T]]:
  """Splits `items` (any iterable, consumed lazily) into ordered batches of `batch_size`.

  Every batch holds exactly `batch_size` items; the last one is padded with repeats of
  its own first item, which are marked invalid. An empty input yields nothing, unless
  `num_batches` asks for more.

  Args:
    items: the items, in order.
    batch_size: items per batch.
    num_batches: if given, all-invalid batches (repeats of the first item, else of
      `filler`) follow until there are this many — several processes running a
      collective per batch must run the same number of batches; more real batches than
      this is an error.
    filler: what an all-invalid batch repeats when `items` was empty.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  iterator, start, count, first = iter(items), 0, 0, filler
  while True:
    chunk = list(itertools.islice(iterator, batch_size))
    if not chunk:
      break
    if num_batches is not None and count == num_batches:
      raise ValueError(f"more than num_batches={num_batches} batches of {batch_size}")
    first = chunk[0] if count == 0 else first
    valid = np.arange(batch_size) < len(chunk)
    yield FixedSizeBatch(chunk + [chunk[0]] * (batch_size - len(chunk)), valid, start)
    start, count = start + len(chunk), count + 1
  while num_batches is not None and count < num_batches:
    if first is None:
      raise ValueError("no item to fill the remaining batches with: pass filler")
    yield FixedSizeBatch([first] * batch_size, np.zeros(batch_size, bool), start)
    count += 1
