"""Checkpoints: orbax `CheckpointManager` (async, atomic, keeps the last few).

A checkpoint at step s holds everything a resumed run needs to continue exactly as an
uninterrupted one:

  state/  the `TrainState` (params, optimizer state, step, RNG key, non-finite counters)
          as global `jax.Array`s, so it can be restored onto any device layout.
  data/   JSON: the data-iterator state of every process after it produced the batch
          of step s-1 (grain iterators' `get_state()`), one entry per process.

Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-save leaves no half-written step behind: `latest_step()` only sees
finished ones. Saves are asynchronous: the arrays are copied to host memory, then
written in a background thread while training continues.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

STATE_ITEM = "state"
DATA_ITEM = "data"


def encode_iterator_state(state: Any) -> dict:
  """A grain iterator state (bytes or a JSON-able value) as a JSON-able dict."""
  if state is None:
    return {"kind": "none"}
  if isinstance(state, (bytes, bytearray)):
    return {"kind": "bytes", "value": base64.b64encode(bytes(state)).decode("ascii")}
  json.dumps(state)  # Fail here, with the value in the message, if it is not JSON-able.
  return {"kind": "json", "value": state}


def decode_iterator_state(encoded: dict) -> Any:
  """Inverse of `encode_iterator_state`."""
  kind = encoded["kind"]
  if kind == "none":
    return None
  if kind == "bytes":
    return base64.b64decode(encoded["value"])
  if kind == "json":
    return encoded["value"]
  raise ValueError(f"unknown iterator-state kind {kind!r} in checkpoint")


def _allgather_json(value: Any) -> list[Any]:
  """Every process's `value` (JSON-able), in process order, on every process."""
  if jax.process_count() == 1:
    return [value]
  payload = np.frombuffer(json.dumps(value).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([payload.size], np.int32))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:payload.size] = payload
  rows = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode()) for row, n in zip(rows, lengths.ravel())]


class Checkpointer:
  """Saves and restores (TrainState, data-iterator state) under `directory`."""

  def __init__(self, directory: str | os.PathLike, *, save_every_steps: int,
               max_to_keep: int = 3, async_save: bool = True):
    """Args:
      directory: where step directories go (created if missing).
      save_every_steps: `maybe_save` saves when step % save_every_steps == 0.
      max_to_keep: older steps are deleted beyond this many.
      async_save: write in a background thread (`wait()` blocks until written).
    """
    if save_every_steps <= 0:
      raise ValueError(f"checkpoint.every_steps={save_every_steps} must be > 0")
    self.directory = epath.Path(directory)
    self.save_every_steps = save_every_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, iterator_state: Any = None) -> None:
    """Saves now. Collective: every process calls it with its own iterator state.

    Args:
      step: the number of updates `state` has taken.
      state: pytree of global `jax.Array`s (`Parallel.checkpointable`).
      iterator_state: this process's data-iterator state (bytes or JSON-able).
    """
    data = {"process_count": jax.process_count(),
            "iterators": _allgather_json(encode_iterator_state(iterator_state))}
    self._manager.save(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state),
        DATA_ITEM: ocp.args.JsonSave(data)}), force=True)

  def reached_preemption(self, step: int) -> bool:
    """JAX's preemption sync point through orbax (`preemption`): True at the step every
    process agreed to save at after a SIGTERM reached one of them."""
    return self._manager.reached_preemption(step)

  def maybe_save(self, step: int, state_fn, iterator_state: Any = None) -> bool:
    """Saves when `step` is a multiple of `save_every_steps`; `state_fn()` gives the state."""
    if step % self.save_every_steps:
      return False
    self.save(step, state_fn(), iterator_state)
    return True

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    """Restores step `step`.

    Args:
      step: a step from `all_steps()`.
      abstract_state: pytree of `jax.ShapeDtypeStruct`s with `sharding` set: the
        structure, dtypes and device layout to restore into.

    Returns:
      (state, this process's iterator state).

    Raises:
      ValueError: the checkpoint was written by a different number of processes (the
        per-process data-iterator states cannot be re-split).
    """
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardRestore(abstract_state),
        DATA_ITEM: ocp.args.JsonRestore()}))
    data = restored[DATA_ITEM]
    if data["process_count"] != jax.process_count():
      raise ValueError(
          f"checkpoint {self.directory}/{step} was written by {data['process_count']} "
          f"processes but this run has {jax.process_count()}: its data-iterator states "
          "cannot be re-split. Resume with the same number of processes, or start a new "
          "workdir initialised from its params (config.init.checkpoint_dir).")
    return restored[STATE_ITEM], decode_iterator_state(data["iterators"][jax.process_index()])

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Restores only `state.params` of step `step` (e.g. to start a new stage from it).

    Args:
      step: a step from `all_steps()`.
      abstract_params: `jax.ShapeDtypeStruct`s with shardings, as for `restore`.
    """
    target = {"params": abstract_params}
    with ocp.PyTreeCheckpointer() as reader:
      restored = reader.restore(
          self.directory / str(step) / STATE_ITEM,
          args=ocp.args.PyTreeRestore(item=target,
                                      restore_args=jax.tree.map(_restore_args, target),
                                      partial_restore=True))
    return restored["params"]

  def param_shapes(self, step: int) -> Any:
    """`state.params` of step `step` as `jax.ShapeDtypeStruct`s, read from the checkpoint's
    metadata (no array is read)."""
    with ocp.PyTreeCheckpointer() as reader:
      metadata = reader.metadata(self.directory / str(step) / STATE_ITEM)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree["params"],
                        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _restore_args(x: jax.ShapeDtypeStruct) -> ocp.ArrayRestoreArgs:
  return ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree` (arrays or structs) placed by `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
