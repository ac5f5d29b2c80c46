"""Run metrics: TensorBoard event files, a JSONL log, and a console rate/ETA line.

Only process 0 writes files (every process computes the same global metrics). The
JSONL log (`<workdir>/metrics.jsonl`, one `{"step": s, ...}` object per line) is the
machine-readable record; it is appended to, so a resumed run continues the same file.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
from typing import Any, Iterator, Mapping, Optional

import jax
import numpy as np

from rlhfv_jax.batch import TokenSequences

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# What XLA reports for each program it compiles (jax._src.dispatch.BACKEND_COMPILE_EVENT).
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
  """Counts the XLA compilations that happen inside `with counter.counting():` blocks on
  the calling thread (e.g. the train step's: one per batch shape bucket is expected, more
  means something retraces every step)."""

  def __init__(self):
    self.count = 0
    self._thread: Optional[int] = None

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _BACKEND_COMPILE_EVENT and threading.get_ident() == self._thread:
      self.count += 1

  @contextlib.contextmanager
  def counting(self) -> Iterator["CompileCounter"]:
    self._thread = threading.get_ident()
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    try:
      yield self
    finally:
      jax.monitoring.unregister_event_duration_listener(self._listen)
      self._thread = None


class MetricsWriter:
  """Writes scalar metrics to TensorBoard and to `<workdir>/metrics.jsonl`."""

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True,
               enabled: Optional[bool] = None):
    """Args:
      workdir: the run directory.
      tensorboard: also write TensorBoard event files under `<workdir>/tensorboard`.
      enabled: write at all (default: only on process 0).
    """
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.jsonl_path = os.path.join(os.fspath(workdir), JSONL_NAME)
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter  # Heavy import, only where it writes.
        self._tb = SummaryWriter(logdir=os.path.join(os.fspath(workdir), TENSORBOARD_DIR))

  def write(self, step: int, scalars: Mapping[str, Any], prefix: str = "") -> None:
    """Records `scalars` (numbers) at `step`; keys become `<prefix><key>`."""
    if not self.enabled:
      return
    values = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps({"step": int(step), **values}) + "\n")
    if self._tb is not None:
      for key, value in values.items():
        self._tb.add_scalar(key, value, global_step=int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(workdir: str | os.PathLike) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl`, in order."""
  with open(os.path.join(os.fspath(workdir), JSONL_NAME)) as f:
    return [json.loads(line) for line in f if line.strip()]


def batch_size_and_tokens(batch: Any) -> tuple[int, int]:
  """(examples, real tokens) in a host batch: the tokens the model runs, i.e. every
  sequence of the batch (chosen and rejected for DDPO) by its attention mask, a
  shared-prefix pair's prompt counted once."""
  examples = int(np.shape(jax.tree.leaves(batch)[0])[0])
  if getattr(batch, "shared_prefix", False):
    return examples, int(np.sum(np.logical_or(batch.chosen.attention_mask,
                                              batch.rejected.attention_mask)))
  is_tokens = lambda x: isinstance(x, TokenSequences)
  sequences = [x for x in jax.tree.leaves(batch, is_leaf=is_tokens) if is_tokens(x)]
  tokens = sum(int(np.sum(s.attention_mask)) for s in sequences)
  return examples, tokens


class Throughput:
  """Steps/s, examples/s, tokens/s and ETA over the last logging window."""

  def __init__(self, total_steps: int, start_step: int, clock=time.monotonic):
    self.total_steps = total_steps
    self._clock = clock
    self._start_time = clock()
    self._window_start = (start_step, self._start_time)
    self._examples = 0
    self._tokens = 0

  def add(self, examples: int, tokens: int) -> None:
    """Counts one step's batch."""
    self._examples += examples
    self._tokens += tokens

  def rates(self, step: int) -> dict[str, float]:
    """Rates since the last call, and resets the window."""
    start_step, start_time = self._window_start
    now = self._clock()
    seconds = max(now - start_time, 1e-9)
    rates = {
        "steps_per_sec": (step - start_step) / seconds,
        "examples_per_sec": self._examples / seconds,
        "tokens_per_sec": self._tokens / seconds,
    }
    self._window_start = (step, now)
    self._examples = self._tokens = 0
    return rates

  def line(self, step: int, rates: Mapping[str, float], loss: Optional[float] = None) -> str:
    """One console line: 'step 40/100 (40%) | loss 0.6123 | 2.50 steps/s | ... | ETA 0:00:24'."""
    steps_left = max(self.total_steps - step, 0)
    eta = (datetime.timedelta(seconds=round(steps_left / rates["steps_per_sec"]))
           if rates["steps_per_sec"] > 0 else "?")
    parts = [f"step {step}/{self.total_steps} ({100 * step / max(self.total_steps, 1):.0f}%)"]
    if loss is not None:
      parts.append(f"loss {loss:.4f}")
    parts += [f"{rates['steps_per_sec']:.2f} steps/s",
              f"{rates['examples_per_sec']:.1f} examples/s",
              f"{rates['tokens_per_sec']:.0f} tokens/s",
              f"ETA {eta}"]
    return " | ".join(parts)


class WindowMean:
  """Averages per-step metrics over a logging window (counters keep their last value)."""

  LAST_VALUE = frozenset({"learning_rate", "nonfinite_consecutive", "nonfinite_total"})

  def __init__(self):
    self._sums: dict[str, float] = {}
    self._last: dict[str, float] = {}
    self._count = 0

  def add(self, metrics: Mapping[str, float]) -> None:
    self._count += 1
    for key, value in metrics.items():
      if key in self.LAST_VALUE:
        self._last[key] = value
      else:
        self._sums[key] = self._sums.get(key, 0.0) + value

  def __bool__(self) -> bool:
    return self._count > 0

  def pop(self) -> dict[str, float]:
    """The window's means and last values; empties the window."""
    out = {k: v / self._count for k, v in self._sums.items()}
    out.update(self._last)
    self.__init__()
    return out
