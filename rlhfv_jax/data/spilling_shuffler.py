"""A TensorFlow-free stand-in for TFDS's example shuffler, with bounded memory.

TFDS's writer hands every serialized example to `tfds.core.shuffle.Shuffler`, which keeps
them in memory up to 1 GB and then spills them into temporary bucket files through
`tf.io.gfile` — so any dataset past 1 GB (the RLHF-V parquet with its images is 1.2 GB)
needs TensorFlow, which this project does not install. `SpillingShuffler` yields exactly
what TFDS's in-memory path yields (examples sorted by key, or by hashed key when
shuffling; duplicate keys are the same error), but when its buffer passes
`spill_bytes` it writes the buffer as a sorted run file with plain Python I/O and merges
the runs at the end (an external merge sort): memory stays under `spill_bytes` plus one
example per run, whatever the dataset's size.

`tfds_builders.prepare` builds every dataset under `use_spilling_shuffler()`.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import pickle
import tempfile
from typing import Any, Iterator, Optional
from unittest import mock

from tensorflow_datasets.core import hashing
from tensorflow_datasets.core import shuffle as tfds_shuffle
from tensorflow_datasets.core import writer as tfds_writer

# Buffered bytes of serialized examples before a sorted run is written to disk.
DEFAULT_SPILL_BYTES = 256 << 20


class SpillingShuffler:
  """Drop-in for `tfds.core.shuffle.Shuffler` (same constructor, properties, iteration)."""

  spill_bytes: int = DEFAULT_SPILL_BYTES

  def __init__(self, dirpath: Any, hash_salt: str | bytes, disable_shuffling: bool = False,
               ignore_duplicates: bool = False):
    self._dirpath = os.fspath(dirpath)
    self._hasher = hashing.Hasher(hash_salt)
    self._disable_shuffling = disable_shuffling
    self._ignore_duplicates = ignore_duplicates
    self._seen_keys: set[Any] = set()
    self._buffer: list[tuple[Any, bytes]] = []
    self._buffer_bytes = 0
    self._runs: list[str] = []
    self._total_bytes = 0
    self._num_examples = 0
    self._read_only = False
    self.max_buffer_bytes = 0  # the most ever held in memory (for tests and logs)

  @property
  def size(self) -> int:
    """Total size in bytes of the serialized examples (not keys)."""
    return self._total_bytes

  @property
  def num_examples(self) -> int:
    return self._num_examples

  @property
  def bucket_lengths(self) -> list[int]:
    return [self._num_examples]  # one sorted stream, as TFDS's in-memory path

  @property
  def num_runs(self) -> int:
    """Sorted runs spilled to disk so far."""
    return len(self._runs)

  def add(self, key: Any, data: bytes) -> None:
    if self._read_only:
      raise AssertionError("add() cannot be called after __iter__.")
    if not isinstance(data, bytes):
      raise AssertionError(f"only bytes can be stored, not {type(data)}")
    hkey = self._hasher.hash_key(key)
    if self._ignore_duplicates:
      if hkey in self._seen_keys:
        return
      self._seen_keys.add(hkey)
    if self._disable_shuffling:
      hkey = key  # the original key keeps the order (as TFDS does)
    self._buffer.append((hkey, data))
    self._buffer_bytes += len(data)
    self.max_buffer_bytes = max(self.max_buffer_bytes, self._buffer_bytes)
    self._total_bytes += len(data)
    self._num_examples += 1
    if self._buffer_bytes > self.spill_bytes:
      self._spill()

  def _spill(self) -> None:
    os.makedirs(self._dirpath, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="spill_", suffix=".tmp", dir=self._dirpath)
    with os.fdopen(fd, "wb") as f:
      for item in sorted(self._buffer):
        pickle.dump(item, f, protocol=pickle.HIGHEST_PROTOCOL)
    self._runs.append(path)
    self._buffer, self._buffer_bytes = [], 0

  @staticmethod
  def _read_run(path: str) -> Iterator[tuple[Any, bytes]]:
    try:
      with open(path, "rb") as f:
        while True:
          try:
            yield pickle.load(f)
          except EOFError:
            return
    finally:
      os.remove(path)

  def __iter__(self) -> Iterator[tuple[Any, bytes]]:
    self._read_only = True
    streams = [self._read_run(p) for p in self._runs] + [iter(sorted(self._buffer))]
    self._buffer, self._runs = [], []
    previous: Optional[tuple[Any, bytes]] = None
    for hkey, data in heapq.merge(*streams):
      if previous is not None and hkey == previous[0]:
        raise tfds_shuffle.DuplicatedKeysError(data, previous[1])
      previous = (hkey, data)
      yield hkey, data


@contextlib.contextmanager
def use_spilling_shuffler(spill_bytes: Optional[int] = None):
  """Within the block, TFDS writers shuffle with `SpillingShuffler` (no TensorFlow).

  Yields the class in use."""
  cls = type("SpillingShuffler", (SpillingShuffler,), {
      "spill_bytes": spill_bytes if spill_bytes is not None else DEFAULT_SPILL_BYTES})
  with mock.patch.object(tfds_writer.shuffle, "Shuffler", cls):
    yield cls
