"""Preemption: a SIGTERM before the node is taken becomes a checkpoint and a clean stop.

TPU VMs and SLURM send SIGTERM some time before they take a node. The train loop asks
`PreemptionWatch.reached(step)` after every step:

* several processes: JAX's preemption sync point
  (`multihost_utils.reached_preemption_sync_point`, through orbax's
  `CheckpointManager.reached_preemption`). The distributed runtime catches SIGTERM on
  whichever process receives it, tells the others, and agrees on the step after the
  largest step any process has reached: every process returns True at that same step,
  so they all save the same checkpoint (a collective) and stop together.
* one process: there is no distributed runtime to catch the signal, so a SIGTERM
  handler records it and the next step is the one to save.

The loop then saves that step and raises `Preempted`; `rlhfv_jax.main` exits with
`EXIT_PREEMPTED`, and re-running the same command resumes from the checkpoint exactly
(the data iterator's state is saved with it).
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable, Optional

import jax
from absl import logging

# What `rlhfv_jax.main` exits with after a preemption checkpoint: EX_TEMPFAIL ("try
# again"), so that a wrapper can tell "re-run me" from success and from failure.
EXIT_PREEMPTED = 75


class Preempted(Exception):
  """The run stopped at a preemption checkpoint; re-running resumes from it."""

  def __init__(self, step: int, directory: Any):
    super().__init__(f"preempted: checkpoint saved at step {step} in {directory}; re-run "
                     "the same command to resume from it")
    self.step = step


class PreemptionWatch:
  """Whether the run has reached the step to save and stop at (module docstring).

  Args:
    sync_point: `step -> bool`, the multi-process sync point (default: orbax's
      `reached_preemption` of the run's checkpoint manager, JAX's underneath).
  """

  def __init__(self, sync_point: Callable[[int], bool]):
    self._sync_point = sync_point
    self._signalled = threading.Event()
    self._previous: Optional[Any] = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum: int, frame: Any) -> None:
    del frame
    logging.warning("signal %d: saving a checkpoint after this step, then stopping", signum)
    self._signalled.set()

  def reached(self, step: int) -> bool:
    """Whether every process should save at `step` and stop (call it at every step)."""
    if jax.process_count() > 1:
      return bool(self._sync_point(step))
    return self._signalled.is_set()

  def close(self) -> None:
    """Restores the SIGTERM handler there was before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
