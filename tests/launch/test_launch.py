"""Launchers: the exact commands printed by --dry_run, the commands really executed
(through stand-in gcloud/sbatch/srun executables), and the sbatch script itself."""

from __future__ import annotations

import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tarfile

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


SSH = "gcloud compute tpus tpu-vm ssh v5p-64 --zone=us-east5-a --project=my-proj --worker=all"


def git(repo: pathlib.Path, *args: str) -> str:
  return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.com",
                         "-c", "user.name=t", *args], check=True, capture_output=True,
                        text=True).stdout


def no_parent_repo(tmp_path: pathlib.Path) -> dict:
  """An environment in which git never looks above tmp_path for a repository."""
  (tmp_path / "tmp").mkdir(exist_ok=True)
  return dict(os.environ, GIT_CEILING_DIRECTORIES=str(tmp_path), TMPDIR=str(tmp_path / "tmp"))


TRACKED = ["launch/_common.py", "launch/tpu_pod.py", "requirements.txt", "rlhfv_jax/__init__.py",
           "rlhfv_jax/main.py", "configs/c.py", ".gitignore", "README.md"]


@pytest.fixture
def checkout(tmp_path) -> pathlib.Path:
  """A small committed rlhfv_jax checkout (the launcher copied in) with an ignored .venv,
  an ignored run output and an untracked, unignored file next to the tracked files."""
  repo = tmp_path / "checkout"
  for name in TRACKED:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
  for name in ("launch/_common.py", "launch/tpu_pod.py", "requirements.txt"):
    shutil.copy(REPO / name, repo / name)
  (repo / "rlhfv_jax/__init__.py").write_text("")
  (repo / "rlhfv_jax/main.py").write_text("print('v1')\n")
  (repo / "configs/c.py").write_text("")
  (repo / ".gitignore").write_text(".venv/\n/runs/\n")
  (repo / "README.md").write_text("readme\n")
  git(repo, "init", "-q")
  git(repo, "add", ".")
  git(repo, "commit", "-q", "-m", "init")
  (repo / ".venv/lib").mkdir(parents=True)
  (repo / ".venv/lib/torch.so").write_bytes(os.urandom(1 << 20))
  (repo / "runs").mkdir()
  (repo / "runs/ckpt.msgpack").write_bytes(b"x" * 1000)
  (repo / "scratch.py").write_text("")
  return repo


def setup_dry_run(repo: pathlib.Path, tmp_path: pathlib.Path, *args: str):
  """Runs the checkout's launcher with --setup --dry_run from tmp_path (not the checkout)."""
  return subprocess.run(
      [sys.executable, str(repo / "launch/tpu_pod.py"), *TPU_ARGS, "--project=my-proj",
       "--setup", "--dry_run", *args, "--", "--config.init.hf_checkpoint=/mnt/llava"],
      cwd=tmp_path, env=no_parent_repo(tmp_path), capture_output=True, text=True, timeout=60)


def archive_of(proc: subprocess.CompletedProcess) -> pathlib.Path:
  """The local archive the printed scp command copies."""
  return pathlib.Path(proc.stdout.splitlines()[0].split()[5])


def test_tpu_pod_dry_run_prints_the_exact_commands(checkout, tmp_path):
  proc = setup_dry_run(checkout, tmp_path)
  assert proc.returncode == 0, proc.stderr
  archive = archive_of(proc)
  commit = git(checkout, "rev-parse", "HEAD").strip()
  # One archive, made outside the repository (in TMPDIR), not `scp --recurse .`.
  assert archive.parent.parent == tmp_path / "tmp"
  assert archive.name == f"rlhfv_jax-{commit[:12]}.tar.gz"
  assert proc.stdout.splitlines() == [
      f"gcloud compute tpus tpu-vm scp {archive} v5p-64:rlhfv_jax.tar.gz --zone=us-east5-a "
      "--project=my-proj --worker=all",
      f"{SSH} --command 'mkdir -p rlhfv_jax && tar -xzf rlhfv_jax.tar.gz -C rlhfv_jax && "
      "rm rlhfv_jax.tar.gz && cd rlhfv_jax && python3 -m venv .venv && .venv/bin/pip install -q "
      f"-r requirements.txt \"jax[tpu]=={jax_pin()}\" -f {LIBTPU}'",
      f"{SSH} {TRAIN}",
  ]
  # What is copied is said (on stderr, so stdout stays the commands).
  size = archive.stat().st_size
  assert (f"copying {len(TRACKED)} tracked files of {checkout} at commit {commit[:12]} "
          in proc.stderr)
  assert "KiB archive" in proc.stderr and size < 100_000  # not the 1 MiB .venv
  assert "1 untracked file(s) not ignored by git are not copied either: scratch.py" in proc.stderr
  assert f"tar -tzf {archive}" in proc.stderr
  # The dry run leaves nothing in the repository.
  assert git(checkout, "status", "--porcelain", "--untracked-files=all").splitlines() == [
      "?? scratch.py"]


def test_tpu_pod_setup_archive_holds_exactly_the_tracked_files(checkout, tmp_path):
  proc = setup_dry_run(checkout, tmp_path)
  assert proc.returncode == 0, proc.stderr
  with tarfile.open(archive_of(proc)) as tar:
    assert sorted(tar.getnames()) == sorted(TRACKED)
    assert tar.extractfile("rlhfv_jax/main.py").read() == b"print('v1')\n"
    assert {m.uid for m in tar.getmembers()} == {0}


def test_tpu_pod_setup_refuses_a_dirty_tree_naming_the_files(checkout, tmp_path):
  (checkout / "rlhfv_jax/main.py").write_text("print('v2')\n")
  (checkout / "configs/c.py").write_text("x = 1\n")
  git(checkout, "add", "configs/c.py")  # staged counts too
  proc = setup_dry_run(checkout, tmp_path)
  assert proc.returncode == 2 and proc.stdout == ""
  assert "uncommitted changes to tracked files (configs/c.py, rlhfv_jax/main.py)" in proc.stderr
  assert "--allow_dirty" in proc.stderr and str(checkout) in proc.stderr
  assert list((tmp_path / "tmp").iterdir()) == []  # the refused archive's directory is gone


def test_tpu_pod_setup_allow_dirty_copies_the_working_tree_versions(checkout, tmp_path):
  (checkout / "rlhfv_jax/main.py").write_text("print('v2')\n")
  (checkout / "README.md").unlink()
  proc = setup_dry_run(checkout, tmp_path, "--allow_dirty")
  assert proc.returncode == 0, proc.stderr
  assert "plus uncommitted changes to 2 file(s)" in proc.stderr
  with tarfile.open(archive_of(proc)) as tar:
    assert sorted(tar.getnames()) == sorted(set(TRACKED) - {"README.md"})
    assert tar.extractfile("rlhfv_jax/main.py").read() == b"print('v2')\n"


def test_tpu_pod_setup_refuses_a_launcher_outside_a_git_repository(tmp_path):
  loose = tmp_path / "loose"
  shutil.copytree(REPO / "launch", loose / "launch")
  shutil.copy(REPO / "requirements.txt", loose)
  proc = setup_dry_run(loose, tmp_path)
  assert proc.returncode == 2 and proc.stdout == ""
  assert f"{loose / 'launch'} is not inside a git repository" in proc.stderr


def test_tpu_pod_setup_refuses_a_repository_that_is_not_rlhfv_jax(checkout, tmp_path):
  git(checkout, "rm", "-rq", "rlhfv_jax")
  git(checkout, "commit", "-qm", "no package")
  proc = setup_dry_run(checkout, tmp_path)
  assert proc.returncode == 2 and proc.stdout == ""
  assert f"{checkout} (the git repository holding {checkout / 'launch'}) has no rlhfv_jax/" in (
      proc.stderr)


def test_tpu_pod_setup_copies_the_archive_then_deletes_it(checkout, tmp_path):
  """A real run (stand-in gcloud that keeps what scp was given): the one archive reaches
  scp, the install and train commands follow, and the local archive is removed after."""
  env = no_parent_repo(tmp_path)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(f'#!/bin/bash\nprintf "%s\\0" gcloud "$@" >> "{tmp_path}/calls"\n'
                    f'printf "\\n" >> "{tmp_path}/calls"\n'
                    f'if [ "$4" = scp ]; then cp "$5" "{tmp_path}/copied.tar.gz"; fi\n')
  gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
  env["PATH"] = f"{bin_dir}:{env['PATH']}"
  proc = subprocess.run([sys.executable, str(checkout / "launch/tpu_pod.py"), *TPU_ARGS,
                         "--setup"], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  made = calls(tmp_path)
  assert [c[4] for c in made] == ["scp", "ssh", "ssh"]
  assert made[0][6:] == ["v5p-64:rlhfv_jax.tar.gz", "--zone=us-east5-a", "--worker=all"]
  assert made[1][-1].startswith("mkdir -p rlhfv_jax && tar -xzf rlhfv_jax.tar.gz -C rlhfv_jax")
  with tarfile.open(tmp_path / "copied.tar.gz") as tar:
    assert sorted(tar.getnames()) == sorted(TRACKED)
  assert not pathlib.Path(made[0][5]).exists()
  assert list((tmp_path / "tmp").iterdir()) == []


def test_tpu_pod_setup_on_this_repository_leaves_out_the_venv(tmp_path):
  """The launcher of this checkout (dirty or not: --allow_dirty) archives its git ls-files."""
  (tmp_path / "tmp").mkdir()
  proc = run("tpu_pod.py", *TPU_ARGS, "--setup", "--allow_dirty", "--dry_run",
             env=dict(os.environ, TMPDIR=str(tmp_path / "tmp")))
  assert proc.returncode == 0, proc.stderr
  tracked = {name for name in git(REPO, "ls-files", "-z").split("\0")
             if name and os.path.lexists(REPO / name)}
  with tarfile.open(archive_of(proc)) as tar:
    names = set(tar.getnames())
  assert names == tracked and not any(name.startswith(".venv/") for name in names)


def test_tpu_pod_allow_dirty_needs_setup():
  proc = run("tpu_pod.py", *TPU_ARGS, "--allow_dirty", "--dry_run")
  assert proc.returncode == 2 and "--allow_dirty only applies with --setup" in proc.stderr


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
