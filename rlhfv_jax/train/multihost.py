"""Multi-process set-up: `jax.distributed.initialize` when the run is launched that way.

Three ways a run finds its peers, in order of precedence:

1. Explicit: a coordinator address (flag `--coordinator_address` or env
   `RLHFV_COORDINATOR_ADDRESS`), with the process count and this process's id (flags or
   `RLHFV_NUM_PROCESSES` / `RLHFV_PROCESS_ID`). Works anywhere, CPU included (the
   multi-host test runs two processes over 127.0.0.1).
2. Cluster auto-detection (flag `--distributed`): `jax.distributed.initialize()` with no
   arguments reads the environment of TPU pod slices and SLURM jobs; the launch scripts
   in `launch/` pass this flag.
3. Neither: a single-process run, nothing to do.

After initialisation `jax.devices()` lists every process's devices; each process feeds
its own share of the global batch (`rlhfv_jax.data.loader.Loader` slices it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional

import jax
from absl import logging

ENV_COORDINATOR = "RLHFV_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "RLHFV_NUM_PROCESSES"
ENV_PROCESS_ID = "RLHFV_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
  """How to call `jax.distributed.initialize` (all None: auto-detect from the cluster)."""

  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None


def resolve(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
            process_id: Optional[int] = None, auto: bool = False,
            environ: Optional[Mapping[str, str]] = None) -> Optional[DistributedSpec]:
  """Decides how (and whether) to initialise, from flags then environment.

  Args:
    coordinator_address, num_processes, process_id: explicit values (flags).
    auto: use cluster auto-detection when no coordinator is given.
    environ: environment to read (default `os.environ`).

  Returns:
    The spec, or None for a single-process run.

  Raises:
    ValueError: a coordinator is given without the process count or id, or the id is
      out of range.
  """
  environ = os.environ if environ is None else environ
  coordinator_address = coordinator_address or environ.get(ENV_COORDINATOR) or None
  if num_processes is None and environ.get(ENV_NUM_PROCESSES):
    num_processes = int(environ[ENV_NUM_PROCESSES])
  if process_id is None and environ.get(ENV_PROCESS_ID):
    process_id = int(environ[ENV_PROCESS_ID])
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(
          f"coordinator address {coordinator_address!r} given without "
          f"{'the number of processes' if num_processes is None else 'this process id'}: "
          f"set --num_processes/--process_id or {ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id={process_id} is not in [0, num_processes={num_processes})")
    return DistributedSpec(coordinator_address, num_processes, process_id)
  if auto:
    return DistributedSpec()
  return None


def initialize(spec: Optional[DistributedSpec]) -> None:
  """Initialises the JAX distributed runtime for `spec` (no-op for None).

  Must run before anything touches a JAX backend (device lists, arrays).
  """
  if spec is None:
    return
  jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                             num_processes=spec.num_processes, process_id=spec.process_id)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
