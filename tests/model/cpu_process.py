"""Set-up shared by the 2-process workers of the model tests (`hf_export_worker`,
`hf_load_worker`): this process's CPU devices, the repo on the path, jax.distributed
over loopback. Run before anything imports a JAX backend."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--coordinator_address", required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)


def initialize(args: argparse.Namespace, local_devices: int = 2) -> None:
  """`local_devices` CPU devices for this process, then `jax.distributed.initialize`."""
  # Keep the suite's other XLA flags; only the device count is this process's own.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(
      flags + [f"--xla_force_host_platform_device_count={local_devices}"])
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo
  import jax
  jax.distributed.initialize(coordinator_address=args.coordinator_address,
                             num_processes=args.num_processes, process_id=args.process_id)


def run_two(worker: str, *args: str, timeout: int = 300) -> list[tuple[int, str]]:
  """Runs the worker script `worker` (next to this file) as processes 0 and 1 of a job
  over a free loopback port; returns each one's (exit status, output)."""
  import socket
  import subprocess
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  script = pathlib.Path(__file__).with_name(worker)
  procs = [subprocess.Popen([sys.executable, str(script), *args,
                             f"--coordinator_address={address}", "--num_processes=2",
                             f"--process_id={i}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  return [(p.returncode, out) for p, out in zip(procs, outputs)]
