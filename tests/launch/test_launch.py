"""Launchers: the exact commands printed by --dry_run, the commands really executed
(through stand-in gcloud/sbatch/srun executables), and the sbatch script itself."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses / stages end to end

REPO = pathlib.Path(__file__).resolve().parents[2]
LIBTPU = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"


def jax_pin() -> str:
  lines = (REPO / "requirements.txt").read_text().splitlines()
  return [l.split("==")[1].strip() for l in lines if l.startswith("jax==")][0]


def run(script: str, *args: str, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, f"launch/{script}", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60)


def fake_tools(tmp_path: pathlib.Path, *names: str) -> dict:
  """Executables that append their argv (one line, NUL-separated) to tmp_path/calls."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in names:
    tool = bin_dir / name
    tool.write_text(f'#!/bin/bash\nprintf "%s\\0" {name} "$@" >> "{tmp_path}/calls"\n'
                    f'printf "\\n" >> "{tmp_path}/calls"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
  return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


def calls(tmp_path: pathlib.Path) -> list[list[str]]:
  lines = (tmp_path / "calls").read_text().splitlines()
  return [line.rstrip("\0").split("\0") for line in lines]


TPU_ARGS = ["--tpu=v5p-64", "--zone=us-east5-a", "--config=configs/llava15_ddpo.py",
            "--workdir=/mnt/runs/ddpo"]
TRAIN = ("--command 'cd rlhfv_jax && .venv/bin/python -m rlhfv_jax.main "
         "--config=configs/llava15_ddpo.py --workdir=/mnt/runs/ddpo --distributed "
         "--config.init.hf_checkpoint=/mnt/llava'")


def test_tpu_pod_dry_run_prints_the_exact_commands():
  proc = run("tpu_pod.py", *TPU_ARGS, "--project=my-proj", "--setup", "--dry_run", "--",
             "--config.init.hf_checkpoint=/mnt/llava")
  assert proc.returncode == 0, proc.stderr
  ssh = "gcloud compute tpus tpu-vm ssh v5p-64 --zone=us-east5-a --project=my-proj --worker=all"
  assert proc.stdout.splitlines() == [
      "gcloud compute tpus tpu-vm scp --recurse . v5p-64:rlhfv_jax --zone=us-east5-a "
      "--project=my-proj --worker=all",
      f"{ssh} --command 'cd rlhfv_jax && python3 -m venv .venv && .venv/bin/pip install -q "
      f"-r requirements.txt \"jax[tpu]=={jax_pin()}\" -f {LIBTPU}'",
      f"{ssh} {TRAIN}",
  ]


def test_tpu_pod_runs_the_train_command_on_all_workers(tmp_path):
  proc = run("tpu_pod.py", *TPU_ARGS, "--", "--config.init.hf_checkpoint=/mnt/llava",
             env=fake_tools(tmp_path, "gcloud"))
  assert proc.returncode == 0, proc.stderr
  assert calls(tmp_path) == [[
      "gcloud", "compute", "tpus", "tpu-vm", "ssh", "v5p-64", "--zone=us-east5-a",
      "--worker=all", "--command",
      "cd rlhfv_jax && .venv/bin/python -m rlhfv_jax.main --config=configs/llava15_ddpo.py "
      "--workdir=/mnt/runs/ddpo --distributed --config.init.hf_checkpoint=/mnt/llava"]]
  # The printed line is the executed command, shell-quoted.
  assert proc.stdout.strip().endswith(TRAIN)


def test_tpu_pod_requires_its_arguments():
  proc = run("tpu_pod.py", "--zone=z", "--config=c", "--workdir=w", "--dry_run")
  assert proc.returncode == 2 and "--tpu" in proc.stderr


SLURM_ARGS = ["--nodes=4", "--gpus_per_node=8", "--time=12:00:00", "--partition=a100",
              "--config=configs/llava15_ddpo.py:13b", "--workdir=/shared/runs/ddpo13b"]
SBATCH = ["sbatch", "--nodes=4", "--gpus-per-node=8", "--time=12:00:00",
          "--job-name=rlhfv_jax", "--output=/shared/runs/ddpo13b/slurm-%j.out",
          "--partition=a100", "launch/slurm_gpu.sbatch", "configs/llava15_ddpo.py:13b",
          "/shared/runs/ddpo13b", "--config.seed=3"]


def test_slurm_dry_run_prints_the_exact_sbatch_command():
  proc = run("slurm_gpu.py", *SLURM_ARGS, "--dry_run", "--", "--config.seed=3")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [" ".join(SBATCH)]


def test_slurm_submits_with_sbatch(tmp_path):
  proc = run("slurm_gpu.py", *SLURM_ARGS, "--", "--config.seed=3",
             env=fake_tools(tmp_path, "sbatch"))
  assert proc.returncode == 0, proc.stderr
  assert calls(tmp_path) == [SBATCH]


def test_slurm_rejects_zero_nodes():
  proc = run("slurm_gpu.py", "--nodes=0", "--config=c", "--workdir=w", "--dry_run")
  assert proc.returncode == 2 and "--nodes and --gpus_per_node must be >= 1" in proc.stderr


def test_sbatch_script_starts_one_distributed_process_per_node(tmp_path):
  env = fake_tools(tmp_path, "srun")
  proc = subprocess.run(["bash", "launch/slurm_gpu.sbatch", "configs/c.py", "/shared/w",
                         "--config.seed=3"], cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert calls(tmp_path) == [[
      "srun", "--ntasks-per-node=1", "python3", "-m", "rlhfv_jax.main", "--config=configs/c.py",
      "--workdir=/shared/w", "--distributed", "--config.seed=3"]]
  usage = subprocess.run(["bash", "launch/slurm_gpu.sbatch"], cwd=REPO, env=env,
                         capture_output=True, text=True)
  assert usage.returncode == 2 and "usage:" in usage.stderr
