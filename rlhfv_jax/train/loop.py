"""The train loop: resume, step, check, log, checkpoint.

Host/device overlap: the metrics of step s are fetched after step s+1 has been
dispatched, so the host never waits for the device except to read numbers the device
has (almost always) finished. The non-finite check therefore runs one step late; the
update itself is skipped on the device (see `step.make_train_step`), so a late check
never lets a bad update through.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional

import jax
from absl import logging

from rlhfv_jax.train import checkpointing
from rlhfv_jax.train import metrics as metrics_lib
from rlhfv_jax.train import preemption
from rlhfv_jax.train.parallel import Parallel


class NonFiniteLossError(RuntimeError):
  """Too many consecutive updates had a non-finite loss or gradient norm."""


class DataExhaustedError(RuntimeError):
  """The data iterator ended before the configured number of steps."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """How long to train and how often to report.

  Attributes:
    num_steps: total optimizer steps of the run (a resumed run continues up to it).
    log_every: steps per console line / metrics record (window means).
    max_consecutive_nonfinite: stop after this many skipped updates in a row.
  """

  num_steps: int
  log_every: int = 10
  max_consecutive_nonfinite: int = 10


def init_or_restore(parallel: Parallel, init_state_fn: Callable[[], Any], abstract_state: Any,
                    checkpointer: Optional[checkpointing.Checkpointer],
                    data_iterator: Any = None) -> tuple[Any, int]:
  """The state to train from: the newest checkpoint in the run, else a fresh one.

  Args:
    parallel: the device layout.
    init_state_fn: `() -> device-placed TrainState` for a fresh run (e.g.
      `parallel.init_state(make_state, params)`); not called when resuming, so a resumed
      run never loads or materialises the initial params.
    abstract_state: the state's `jax.ShapeDtypeStruct`s (e.g. `jax.eval_shape` of the
      state built from `model.param_shapes`), the restore target.
    checkpointer: the run's checkpoints, or None.
    data_iterator: if given and a checkpoint is restored, its `set_state` receives the
      saved iterator state, so the run continues with the batch it would have seen.

  Returns:
    (device-placed state, step to continue from).
  """
  latest = checkpointer.latest_step() if checkpointer is not None else None
  if latest is None:
    return init_state_fn(), 0
  target = checkpointing.abstract_with_shardings(abstract_state,
                                                 parallel.checkpoint_shardings(abstract_state))
  state, iterator_state = checkpointer.restore(latest, target)
  if data_iterator is not None:
    if iterator_state is None:
      raise ValueError(f"checkpoint step {latest} in {checkpointer.directory} has no data-"
                       "iterator state, so the resumed run cannot see the same batches")
    data_iterator.set_state(iterator_state)
  logging.info("resuming from checkpoint step %d in %s", latest, checkpointer.directory)
  return parallel.put_state(state), latest


def _iterator_state(data_iterator: Any) -> Any:
  get_state = getattr(data_iterator, "get_state", None)
  return get_state() if get_state is not None else None


def _shape_signature(batch: Any) -> tuple:
  return tuple(tuple(getattr(x, "shape", ())) for x in jax.tree.leaves(batch))


def _next_batch(data_iterator: Iterator[Any], step: int, start_step: int,
                num_steps: int) -> Any:
  """The iterator's next host batch; DataExhaustedError when it has none."""
  try:
    return next(data_iterator)
  except StopIteration:
    raise DataExhaustedError(
        f"the data iterator ended after {step - start_step} batches, at step {step} of "
        f"{num_steps}: lower train.num_steps / train.num_epochs or check the "
        "dataset size") from None


class _CompileWatch:
  """Batch shapes seen and compilations of the train step, to tell an expected
  compilation (one per shape bucket) from a retrace."""

  def __init__(self):
    self.shapes_seen: set[tuple] = set()
    self.compiles = metrics_lib.CompileCounter()

  def see(self, step: int, host_batch: Any) -> None:
    signature = _shape_signature(host_batch)
    if signature not in self.shapes_seen:
      self.shapes_seen.add(signature)
      logging.info("step %d: compiling the train step for a new batch shape bucket (%d so far)",
                   step, len(self.shapes_seen))

  def log_summary(self) -> None:
    logging.info("the train step compiled %d time(s) for %d batch shape(s)",
                 self.compiles.count, len(self.shapes_seen))
    if self.compiles.count > len(self.shapes_seen):
      logging.warning("the train step compiled %d times for only %d batch shapes: something "
                      "retraces it (a Python value that changes between steps?)",
                      self.compiles.count, len(self.shapes_seen))


class _StepReporter:
  """The host's side of each finished step: the non-finite check, window means,
  throughput, the console line and the metrics record."""

  def __init__(self, parallel: Parallel, settings: LoopSettings, start_step: int,
               checkpointer: Optional[checkpointing.Checkpointer],
               writer: Optional[metrics_lib.MetricsWriter]):
    self.parallel = parallel
    self.settings = settings
    self.checkpointer = checkpointer
    self.writer = writer
    self.throughput = metrics_lib.Throughput(settings.num_steps, start_step)
    self.window = metrics_lib.WindowMean()

  def __call__(self, step: int, device_metrics: dict, examples: int, tokens: int) -> None:
    """Reports the step that ended at `step` (blocks until its metrics are computed)."""
    values = self.parallel.host_metrics(device_metrics)
    self.window.add(values)
    self.throughput.add(examples, tokens)
    self._check_finite(step, values)
    if step % self.settings.log_every == 0 or step == self.settings.num_steps:
      rates = self.throughput.rates(step)
      record = dict(self.window.pop(), **rates)
      logging.info("%s", self.throughput.line(step, rates, record.get("loss")))
      if self.writer is not None:
        self.writer.write(step, record)

  def _check_finite(self, step: int, values: dict[str, float]) -> None:
    """Warns of a skipped update; NonFiniteLossError after too many in a row."""
    limit = self.settings.max_consecutive_nonfinite
    if values["update_skipped"]:
      logging.warning(
          "step %d: non-finite loss (%s) or gradient norm (%s); update skipped "
          "(%d in a row, %d in total)", step, values["loss"], values["grad_norm"],
          values["nonfinite_consecutive"], values["nonfinite_total"])
    if values["nonfinite_consecutive"] >= limit:
      newest = self.checkpointer.latest_step() if self.checkpointer is not None else None
      raise NonFiniteLossError(
          f"stopping at step {step}: {int(values['nonfinite_consecutive'])} consecutive "
          f"updates had a non-finite loss or gradient norm (loss={values['loss']}, "
          f"grad_norm={values['grad_norm']}; limit train.max_consecutive_nonfinite={limit}). "
          "The params are still those of the last finite update; newest checkpoint: "
          f"{newest}. Check the data for empty or corrupt examples, or lower "
          "optim.learning_rate / set optim.max_grad_norm.")


def train(parallel: Parallel, state: Any, frozen_inputs: Any, data_iterator: Iterator[Any], *,
          start_step: int, settings: LoopSettings,
          checkpointer: Optional[checkpointing.Checkpointer] = None,
          writer: Optional[metrics_lib.MetricsWriter] = None) -> Any:
  """Trains from `start_step` to `settings.num_steps`.

  Args:
    parallel: the device layout and compiled step.
    state: device-placed state (from `init_or_restore`); donated step by step.
    frozen_inputs: device-placed untrained loss inputs (`parallel.put_frozen_inputs`), or None.
    data_iterator: yields this process's host batches [local_batch, ...]; its
      `get_state()` (if any) is saved with every checkpoint.
    start_step: the state's step.
    settings: see `LoopSettings`.
    checkpointer: saves every `checkpointer.save_every_steps` and at the end.
    writer: metrics sink (None: console only).

  Returns:
    The final device state.

  Raises:
    NonFiniteLossError: `settings.max_consecutive_nonfinite` skipped updates in a row.
    DataExhaustedError: the iterator ran out before `settings.num_steps`.
    preemption.Preempted: a SIGTERM (preemption notice) reached a process; every process
      saved the same step's checkpoint and stopped (`rlhfv_jax.train.preemption`).
  """
  report = _StepReporter(parallel, settings, start_step, checkpointer, writer)
  watch = _CompileWatch()
  last_saved = start_step if checkpointer is not None and start_step > 0 else None
  preempted = (preemption.PreemptionWatch(checkpointer.reached_preemption)
               if checkpointer is not None else None)
  try:
    return _train_steps(parallel, state, frozen_inputs, data_iterator, start_step, settings,
                        checkpointer, report, watch, last_saved, preempted)
  finally:
    if preempted is not None:
      preempted.close()


def _train_steps(parallel: Parallel, state: Any, frozen_inputs: Any,
                 data_iterator: Iterator[Any], start_step: int, settings: LoopSettings,
                 checkpointer: Optional[checkpointing.Checkpointer], report: _StepReporter,
                 watch: _CompileWatch, last_saved: Optional[int],
                 preempted: Optional[preemption.PreemptionWatch]) -> Any:
  """The steps of `train`."""
  pending = None
  for step in range(start_step, settings.num_steps):
    host_batch = _next_batch(data_iterator, step, start_step, settings.num_steps)
    iterator_state = _iterator_state(data_iterator)
    watch.see(step, host_batch)
    examples, tokens = metrics_lib.batch_size_and_tokens(host_batch)
    device_batch = parallel.put_batch(host_batch)
    with watch.compiles.counting():
      state, device_metrics = parallel.step(state, device_batch, frozen_inputs)
    if pending is not None:
      report(*pending)
    # Every process holds an equal share of the global batch; tokens are extrapolated.
    pending = (step + 1, device_metrics, examples * jax.process_count(),
               tokens * jax.process_count())
    if checkpointer is not None and checkpointer.maybe_save(
        step + 1, lambda: parallel.checkpointable(state), iterator_state):
      last_saved = step + 1
    if preempted is not None and preempted.reached(step + 1) and step + 1 < settings.num_steps:
      # Every process is at this step (the sync point): save it, together, and stop.
      report(*pending)
      if last_saved != step + 1:
        checkpointer.save(step + 1, parallel.checkpointable(state), iterator_state)
      checkpointer.wait()
      raise preemption.Preempted(step + 1, checkpointer.directory)
  if pending is not None:
    report(*pending)
  watch.log_summary()
  if checkpointer is not None:
    if last_saved != settings.num_steps:
      checkpointer.save(settings.num_steps, parallel.checkpointable(state),
                        _iterator_state(data_iterator))
    checkpointer.wait()
  return state
