"""Multi-host: 2 processes x 2 CPU devices over loopback, stopped at step 2 and resumed
from their checkpoint == 1 process x 4 devices straight through (losses, final params,
checkpoints with one iterator state per process); and how the distributed set-up is
resolved from flags and environment."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from rlhfv_jax.train import metrics as metrics_lib
from rlhfv_jax.train import multihost

pytestmark = pytest.mark.slow  # subprocesses / stages end to end

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir: pathlib.Path, local_devices: int, *extra: str):
  return subprocess.Popen(
      [sys.executable, str(WORKER), f"--workdir={workdir}", f"--local_devices={local_devices}",
       *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """(1 process x 4 devices, 2 processes x 2 devices, interrupted) run directories."""
  single = tmp_path_factory.mktemp("single")
  multi = tmp_path_factory.mktemp("multi")
  address = f"127.0.0.1:{free_port()}"
  procs = [launch(single, 4)]
  procs += [launch(multi, 2, f"--coordinator_address={address}", "--num_processes=2",
                   f"--process_id={i}", "--interrupt_at=2") for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return single, multi


@pytest.mark.parametrize("parallelism", ["pmap", "fsdp"])
def test_two_processes_match_one(runs, parallelism):
  single, multi = (d / parallelism for d in runs)
  want, got = np.load(single / "final_params.npz"), np.load(multi / "final_params.npz")
  assert sorted(want) == sorted(got)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)
  losses = lambda d: [(r["step"], r["loss"]) for r in metrics_lib.read_jsonl(d)]
  np.testing.assert_allclose(np.array(losses(multi)), np.array(losses(single)), rtol=1e-6)
  assert [s for s, _ in losses(multi)] == [1, 2, 3, 4]

  # Both runs wrote the same checkpoint steps; the 2-process one holds each process's
  # own iterator state.
  steps = lambda d: sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())
  assert steps(multi) == steps(single) == [2, 4]
  data = json.loads((multi / "checkpoints" / "4" / "data" / "metadata").read_text())
  assert data["process_count"] == 2
  assert [it["value"] for it in data["iterators"]] == [{"position": 4, "process": 0},
                                                        {"position": 4, "process": 1}]


def test_sigterm_to_one_process_saves_one_step_everywhere_and_resumes_exactly(runs, tmp_path):
  """A preemption notice (SIGTERM) to process 1 only: both processes save the same step's
  checkpoint and exit with EXIT_PREEMPTED; re-running them ends with the uninterrupted
  run's params."""
  from rlhfv_jax.train import preemption
  single = runs[0] / "pmap"
  address = f"127.0.0.1:{free_port()}"
  procs = [launch(tmp_path, 2, f"--coordinator_address={address}", "--num_processes=2",
                  f"--process_id={i}", "--sigterm_at=1", "--parallelisms=pmap")
           for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == preemption.EXIT_PREEMPTED, out[-4000:]
  stops = {line for out in outputs for line in out.splitlines() if "PREEMPTED at step" in line}
  assert len(stops) == 1, stops  # the same step on both processes
  (stop,) = stops
  step = int(stop.rsplit(" ", 1)[1])
  assert 1 <= step < 4
  saved = sorted(int(p.name) for p in (tmp_path / "pmap" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved[-1] == step
  address = f"127.0.0.1:{free_port()}"
  procs = [launch(tmp_path, 2, f"--coordinator_address={address}", "--num_processes=2",
                  f"--process_id={i}", "--parallelisms=pmap") for i in range(2)]
  for p in procs:
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out[-4000:]
  want, got = np.load(single / "final_params.npz"), np.load(tmp_path / "pmap" / "final_params.npz")
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_resolve_explicit_flags_and_environment():
  spec = multihost.resolve("10.0.0.1:1234", 4, 3, environ={})
  assert spec == multihost.DistributedSpec("10.0.0.1:1234", 4, 3)
  env = {multihost.ENV_COORDINATOR: "h:1", multihost.ENV_NUM_PROCESSES: "2",
         multihost.ENV_PROCESS_ID: "1"}
  assert multihost.resolve(environ=env) == multihost.DistributedSpec("h:1", 2, 1)
  # Flags win over the environment.
  assert multihost.resolve(process_id=0, environ=env) == multihost.DistributedSpec("h:1", 2, 0)


def test_resolve_auto_and_single_process():
  assert multihost.resolve(environ={}) is None
  assert multihost.resolve(auto=True, environ={}) == multihost.DistributedSpec()


def test_resolve_rejects_incomplete_or_inconsistent_settings():
  with pytest.raises(ValueError, match="without the number of processes"):
    multihost.resolve("h:1", None, 0, environ={})
  with pytest.raises(ValueError, match="without this process id"):
    multihost.resolve("h:1", 2, None, environ={})
  with pytest.raises(ValueError, match=r"process_id=2 is not in \[0, num_processes=2\)"):
    multihost.resolve("h:1", 2, 2, environ={})
