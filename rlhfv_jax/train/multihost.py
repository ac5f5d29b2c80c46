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

In a SLURM job the log line of the set-up names the job's variables that gave the process
and device counts (a config that does not fit them is refused right after), and on GPUs a
process that sees fewer GPUs than SLURM gave its task is refused: JAX's SLURM detection
assumes one process per GPU and hands a process of `launch/slurm_gpu.sbatch` (one per
node) only GPU SLURM_LOCALID unless JAX_LOCAL_DEVICE_IDS says otherwise (the script sets
it). `tests/launch/test_slurm_end_to_end.py` runs that path under stand-in sbatch / srun.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping, Optional

import jax
from absl import logging

ENV_COORDINATOR = "RLHFV_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "RLHFV_NUM_PROCESSES"
ENV_PROCESS_ID = "RLHFV_PROCESS_ID"
# What JAX's SLURM detection requires (jax/_src/clusters/slurm_cluster.py).
SLURM_TASK_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                        "SLURM_LOCALID")


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


def slurm_job(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """The SLURM task's variables that decide the processes and devices, as one line; None
  outside a SLURM task (a variable JAX's detection needs is missing)."""
  environ = os.environ if environ is None else environ
  if not all(name in environ for name in SLURM_TASK_VARIABLES):
    return None
  names = ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE",
           "SLURM_GPUS_ON_NODE", "JAX_LOCAL_DEVICE_IDS")
  return f"SLURM job {environ['SLURM_JOB_ID']}: " + ", ".join(
      f"{name}={environ[name]}" for name in names if name in environ)


def _tasks_on_node(environ: Mapping[str, str]) -> Optional[int]:
  """This node's task count from SLURM_STEP_TASKS_PER_NODE (e.g. '2(x3),1'), or None."""
  per_node = []
  for item in environ.get("SLURM_STEP_TASKS_PER_NODE", "").split(","):
    match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
    if not match:
      return None
    per_node += [int(match.group(1))] * int(match.group(2) or 1)
  node = int(environ.get("SLURM_NODEID", "-1"))
  return per_node[node] if 0 <= node < len(per_node) else None


def slurm_gpu_problem(environ: Mapping[str, str], platform: str,
                      local_devices: int) -> Optional[str]:
  """Why this SLURM task's process sees too few of the GPUs SLURM gave it, or None.

  Args:
    environ: the task's environment.
    platform: the JAX backend (`jax.default_backend()`); only "gpu" is checked.
    local_devices: the devices the process sees (`jax.local_device_count()`).
  """
  if platform != "gpu" or slurm_job(environ) is None:
    return None
  gpus, tasks = environ.get("SLURM_GPUS_ON_NODE"), _tasks_on_node(environ)
  if not gpus or not gpus.isdigit() or not tasks:
    return None
  expected = int(gpus) // tasks
  if local_devices >= expected:
    return None
  return (f"this process sees {local_devices} of the {expected} GPUs of its SLURM task "
          f"(SLURM_GPUS_ON_NODE={gpus} over {tasks} task(s) on node "
          f"{environ.get('SLURM_NODEID')}): JAX's SLURM detection gives each process only GPU "
          f"SLURM_LOCALID={environ['SLURM_LOCALID']} unless JAX_LOCAL_DEVICE_IDS lists them "
          f"(now {environ.get('JAX_LOCAL_DEVICE_IDS', 'unset')}); launch/slurm_gpu.sbatch sets "
          "it to all of the node's GPUs, or run one task per GPU")


def initialize(spec: Optional[DistributedSpec]) -> None:
  """Initialises the JAX distributed runtime for `spec` (no-op for None).

  Must run before anything touches a JAX backend (device lists, arrays).

  Raises:
    RuntimeError: a SLURM task's process on GPUs sees fewer GPUs than its task has
      (`slurm_gpu_problem`).
  """
  if spec is None:
    return
  jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                             num_processes=spec.num_processes, process_id=spec.process_id)
  job = slurm_job() if spec == DistributedSpec() else None  # auto-detected from SLURM
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices%s",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), f" ({job})" if job else "")
  if job:
    problem = slurm_gpu_problem(os.environ, jax.default_backend(), jax.local_device_count())
    if problem:
      raise RuntimeError(problem)
