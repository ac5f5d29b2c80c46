"""The SLURM path end to end on this machine: `launch/slurm_gpu.py` -> sbatch ->
`launch/slurm_gpu.sbatch` -> srun -> 2 x `python -m rlhfv_jax.main --distributed`.

Test-only stand-ins for sbatch and srun (`slurm_standins/`) run the real batch script as
an allocation of 2 nodes x 2 GPUs, every node being this machine and every GPU a CPU
device; each task gets the variables SLURM gives it, so JAX's own SLURM detection forms
the 2-process job over loopback (no coordinator flags). The launcher runs as a user would:
from a directory outside the repository, with the environment's python not on PATH and
a relative workdir that does not exist yet.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import main_run_data
from rlhfv_jax.train import checkpointing
from rlhfv_jax.train import metrics as metrics_lib
from rlhfv_jax.train import multihost

REPO = pathlib.Path(__file__).resolve().parents[2]
STANDINS = pathlib.Path(__file__).with_name("slurm_standins")
TINY = str(REPO / "configs" / "tiny_cpu.py")
NUM_STEPS = 3  # the first step has learning rate 0 (warm-up): two real updates
DEVICE_FLAG = "--xla_force_host_platform_device_count"

slow = pytest.mark.slow  # subprocesses / stages end to end


@pytest.fixture
def slurm_env(tmp_path) -> dict[str, str]:
  """This process's environment (the suite's XLA flags, which the srun stand-in keeps but
  for the device count) with the stand-ins first on PATH and the environment's own bin
  directory off it; no SLURM_* or launcher variables leak in from outside."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("sbatch", "srun"):  # run by this python: PATH may have no python3 of its own
    text = (STANDINS / name).read_text().split("\n", 1)[1]
    (bin_dir / name).write_text(f"#!{sys.executable}\n{text}")
    (bin_dir / name).chmod(0o755)
  venv_bin = pathlib.Path(sys.executable).parent.resolve()
  path = [str(bin_dir)] + [p for p in os.environ["PATH"].split(os.pathsep)
                           if p and pathlib.Path(p).resolve() != venv_bin]
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in (
      "RLHFV_REPO", "RLHFV_PYTHON", "PYTHONPATH", "JAX_LOCAL_DEVICE_IDS", "VIRTUAL_ENV")}
  return dict(env, PATH=os.pathsep.join(path), JAX_PLATFORMS="cpu")


def submit(env: dict[str, str], submit_dir: pathlib.Path, *args: str, timeout: int = 600
           ) -> tuple[int, str, pathlib.Path]:
  """Runs the launcher from `submit_dir` with a relative workdir `run`.

  Returns:
    (exit status, the launcher's output, the job log slurm-<id>.out).
  """
  submit_dir.mkdir(parents=True, exist_ok=True)
  proc = subprocess.Popen(
      [sys.executable, str(REPO / "launch" / "slurm_gpu.py"), "--nodes=2", "--gpus_per_node=2",
       f"--config={args[0]}", "--workdir=run", "--", *args[1:]],
      cwd=submit_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      start_new_session=True)  # its own process group: a timeout ends the whole job
  try:
    out = proc.communicate(timeout=timeout)[0]
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    pytest.fail(f"the SLURM job ran past {timeout}s:\n{out[-4000:]}")
  job = re.search(r"Submitted batch job (\d+)", out)
  assert job, out
  return proc.returncode, out, submit_dir / "run" / f"slurm-{job.group(1)}.out"


def final_params(workdir: pathlib.Path) -> dict:
  """`state.params` of the run's last checkpoint (step NUM_STEPS), on one device."""
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", save_every_steps=1)
  assert ckpt.latest_step() == NUM_STEPS
  shapes = ckpt.param_shapes(NUM_STEPS)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = checkpointing.abstract_with_shardings(shapes, jax.tree.map(lambda _: sharding, shapes))
  restored = ckpt.restore_params(NUM_STEPS, target)
  ckpt.close()
  return {jax.tree_util.keystr(path): np.asarray(x)
          for path, x in jax.tree_util.tree_leaves_with_path(restored)}


@slow
def test_two_slurm_tasks_match_one_process(slurm_env, tmp_path, llama_tokenizer_path):
  """A tiny DDPO run as 2 SLURM tasks x 2 devices ends with the losses and params of one
  process x 4 devices on the same global batch of 8."""
  steps = f"--config.train.num_steps={NUM_STEPS}"
  # 1 process x 4 devices, launched directly, alongside the SLURM job (less waiting).
  single = tmp_path / "single"
  env = dict(slurm_env, PYTHONPATH=str(REPO))
  env["XLA_FLAGS"] = " ".join([f for f in env.get("XLA_FLAGS", "").split()
                               if not f.startswith(DEVICE_FLAG)] + [f"{DEVICE_FLAG}=4"])
  baseline = subprocess.Popen(
      [sys.executable, "-m", "rlhfv_jax.main", f"--config={TINY}", f"--workdir={single}",
       *main_run_data.overrides(tmp_path / "data_single", llama_tokenizer_path), steps],
      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    # The job builds its own copy of the dataset (process 0 writes, the other waits).
    status, out, log = submit(slurm_env, tmp_path / "submit", TINY,
                              *main_run_data.overrides(tmp_path / "data_slurm",
                                                       llama_tokenizer_path), steps)
    baseline_out = baseline.communicate(timeout=600)[0]
  finally:
    if baseline.poll() is None:
      baseline.kill()
  assert baseline.returncode == 0, baseline_out[-4000:]
  assert log.is_file(), out  # the launcher made the workdir that SLURM writes the log to
  text = log.read_text()
  assert status == 0, f"{out}\n{text[-6000:]}"
  job_id = int(log.stem.split("-")[1])
  # The batch script's own line, then each process's: JAX's SLURM detection made the job.
  assert ("SLURM_NTASKS=2 processes (one per node) x 2 GPUs (SLURM_GPUS_PER_NODE) = 4 devices; "
          f"python {sys.executable}, repository {REPO}") in text
  for process in range(2):
    assert re.search(rf"process {process} of 2, 2 local / 4 global devices \(SLURM job {job_id}: "
                     rf"SLURM_NTASKS=2, SLURM_PROCID={process}, ", text), text[-6000:]
  # The coordinator is the first node of SLURM_STEP_NODELIST at the port JAX derives from
  # the job ID (jax/_src/clusters/slurm_cluster.py).
  port = job_id % 2 ** 12 + (65535 - 2 ** 12 + 1)
  assert text.count(f"Connecting to JAX distributed service on localhost:{port}") == 2
  # Each process is given both of its node's GPUs (JAX_LOCAL_DEVICE_IDS from the script);
  # JAX's default would be GPU SLURM_LOCALID alone (on CPU only this log line shows it).
  assert text.count("JAX distributed initialized with visible devices: 0,1") == 2

  multi = tmp_path / "submit" / "run"
  losses = lambda d: [(r["step"], r["loss"]) for r in metrics_lib.read_jsonl(d)]
  assert [s for s, _ in losses(multi)] == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose(np.array(losses(multi)), np.array(losses(single)), rtol=1e-6)
  assert abs(losses(multi)[-1][1] - losses(multi)[0][1]) > 1e-3  # the params did move
  want, got = final_params(single), final_params(multi)
  assert sorted(got) == sorted(want)
  # The all-reduce sums in another order across processes; Adam's m / sqrt(v) magnifies that
  # for the few gradients near its epsilon (seen: 24 of 2M weights, up to 2.5e-6). 1e-5 is
  # 1% of one update (learning rate 1e-3, Adam's steps about that size); another batch
  # share would change most weights by a good part of an update.
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
  data = json.loads((multi / "checkpoints" / str(NUM_STEPS) / "data" / "metadata").read_text())
  assert data["process_count"] == 2 and len(data["iterators"]) == 2  # one per process


@slow
def test_a_config_that_does_not_fit_the_allocation_is_refused_at_start(slurm_env, tmp_path,
                                                                        llama_tokenizer_path):
  """2 nodes x 2 GPUs = 4 devices: a global batch of 6 and a 4 x 2 mesh do not fit. Both
  processes refuse the config right after start-up, naming the fields; the job log says
  where the 4 devices came from (SLURM_NTASKS, SLURM_GPUS_PER_NODE); nothing is built."""
  data = tmp_path / "data"
  status, out, log = submit(
      slurm_env, tmp_path / "submit", TINY, *main_run_data.overrides(data, llama_tokenizer_path),
      "--config.train.global_batch_size=6", "--config.train.parallelism=fsdp",
      "--config.train.mesh.data=4", "--config.train.mesh.fsdp=2", timeout=300)
  text = log.read_text()
  assert status == 1, f"{out}\n{text[-6000:]}"
  assert "SLURM_NTASKS=2 processes (one per node) x 2 GPUs (SLURM_GPUS_PER_NODE) = 4 devices" \
      in text
  assert re.search(r"process 0 of 2, 2 local / 4 global devices \(SLURM job \d+: SLURM_NTASKS=2",
                   text)
  for problem in ("train.global_batch_size=6 is not divisible by 4 devices",
                  "train.mesh data=4 x fsdp=2 does not match the 4 devices"):
    assert text.count(problem) == 2, text[-6000:]  # once per process
  assert "Traceback" not in text
  run = tmp_path / "submit" / "run"
  assert sorted(p.name for p in run.iterdir()) == [log.name]  # no config, checkpoint, metrics
  assert not (data / "tfds").exists()  # nor the dataset


def slurm_task(**extra: str) -> dict[str, str]:
  """The variables of task 1 (node 1) of a 2-node job with one task per node."""
  return {**dict(SLURM_JOB_ID="77", SLURM_STEP_NODELIST="n[1-2]", SLURM_NTASKS="2",
                 SLURM_PROCID="1", SLURM_LOCALID="0", SLURM_NODEID="1",
                 SLURM_STEP_TASKS_PER_NODE="1(x2)"), **extra}


def test_slurm_job_line_names_the_variables():
  assert multihost.slurm_job({}) is None
  assert multihost.slurm_job(slurm_task(SLURM_GPUS_ON_NODE="8")) == (
      "SLURM job 77: SLURM_NTASKS=2, SLURM_PROCID=1, SLURM_STEP_NODELIST=n[1-2], "
      "SLURM_STEP_TASKS_PER_NODE=1(x2), SLURM_GPUS_ON_NODE=8")


def test_a_process_with_too_few_of_its_tasks_gpus_is_refused():
  """One process per node over 8 GPUs: JAX's SLURM default (GPU SLURM_LOCALID only) is
  caught; all 8, or one task per GPU, or CPU, or no SLURM pass."""
  problem = multihost.slurm_gpu_problem(slurm_task(SLURM_GPUS_ON_NODE="8"), "gpu", 1)
  assert problem.startswith("this process sees 1 of the 8 GPUs of its SLURM task "
                            "(SLURM_GPUS_ON_NODE=8 over 1 task(s) on node 1)")
  assert "JAX_LOCAL_DEVICE_IDS" in problem
  assert multihost.slurm_gpu_problem(slurm_task(SLURM_GPUS_ON_NODE="8"), "gpu", 8) is None
  per_gpu = slurm_task(SLURM_GPUS_ON_NODE="8", SLURM_STEP_TASKS_PER_NODE="8(x2)",
                       SLURM_NTASKS="16", SLURM_PROCID="9", SLURM_LOCALID="1")
  assert multihost.slurm_gpu_problem(per_gpu, "gpu", 1) is None
  uneven = slurm_task(SLURM_GPUS_ON_NODE="8", SLURM_STEP_TASKS_PER_NODE="8,2")
  assert "sees 1 of the 4 GPUs" in multihost.slurm_gpu_problem(uneven, "gpu", 1)
  assert multihost.slurm_gpu_problem(slurm_task(SLURM_GPUS_ON_NODE="8"), "cpu", 1) is None
  assert multihost.slurm_gpu_problem({"SLURM_GPUS_ON_NODE": "8"}, "gpu", 1) is None
