r"""Submits `rlhfv_jax.main` to SLURM: one process per node, every GPU of the node.

  python launch/slurm_gpu.py --nodes=2 --gpus_per_node=8 --time=24:00:00 \
      --config=configs/llava15_ddpo.py:13b --workdir=/shared/runs/ddpo13b [--dry_run] \
      -- --config.init.hf_checkpoint=/shared/models/llava-1.5-13b-hf ...

It runs `sbatch launch/slurm_gpu.sbatch CONFIG WORKDIR OVERRIDES...`; the batch script
starts the processes with srun and --distributed (JAX reads the SLURM environment). The
workdir must be on a filesystem every node sees; the job log goes to
WORKDIR/slurm-<jobid>.out. --dry_run prints the sbatch command instead of submitting it.

The job runs in the directory this is called from (relative CONFIG / WORKDIR mean the same
there) and needs three things the sbatch command cannot say, so this creates or passes them
(tests/launch/test_slurm_end_to_end.py runs the whole path under stand-in sbatch / srun):

* WORKDIR itself: SLURM does not create the --output directory; a job without it fails
  before its first line, leaving no log at all.
* RLHFV_REPO (this repository) in the environment, which sbatch hands to the job: SLURM
  runs a spooled copy of the batch script, so the script cannot find the repository from
  its own path, and the package is not installed into the environment.
* RLHFV_PYTHON (default: the python running this): `python3` on the nodes' PATH is some
  other python unless the environment was activated before submitting.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Mapping

from _common import execute, split_overrides

SBATCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slurm_gpu.sbatch")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sbatch_command(args: argparse.Namespace, overrides: list[str]) -> list[str]:
  command = ["sbatch", f"--nodes={args.nodes}", f"--gpus-per-node={args.gpus_per_node}",
             f"--time={args.time}", f"--job-name={args.job_name}",
             f"--output={os.path.join(args.workdir, 'slurm-%j.out')}"]
  if args.partition:
    command.append(f"--partition={args.partition}")
  if args.account:
    command.append(f"--account={args.account}")
  return command + [os.path.relpath(SBATCH_SCRIPT), args.config, args.workdir, *overrides]


def job_environment(environ: Mapping[str, str]) -> dict[str, str]:
  """What the batch script needs to know in the environment (kept where already set)."""
  return {"RLHFV_REPO": environ.get("RLHFV_REPO", REPO),
          "RLHFV_PYTHON": environ.get("RLHFV_PYTHON", sys.executable)}


def make_workdir(workdir: str) -> None:
  """Creates WORKDIR for the job log, or warns when it cannot (e.g. the shared filesystem
  is not mounted here); a new top-level directory is never made (a mount point)."""
  path = os.path.abspath(workdir)
  top = os.path.join(os.sep, path.split(os.sep)[1])
  try:
    if not os.path.isdir(top):
      raise FileNotFoundError(f"{top} does not exist here")
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    print(f"warning: cannot create --workdir={workdir} ({e}); SLURM does not create the "
          "directory of the job log, so it must exist on the nodes", file=sys.stderr)


def main(argv: list[str]) -> int:
  own, overrides = split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--nodes", type=int, default=1)
  parser.add_argument("--gpus_per_node", type=int, default=8)
  parser.add_argument("--time", default="24:00:00")
  parser.add_argument("--job_name", default="rlhfv_jax")
  parser.add_argument("--partition", default="")
  parser.add_argument("--account", default="")
  parser.add_argument("--config", required=True, help="config file[:variant]")
  parser.add_argument("--workdir", required=True, help="shared run directory")
  parser.add_argument("--dry_run", action="store_true", help="print the command only")
  args = parser.parse_args(own)
  if args.nodes < 1 or args.gpus_per_node < 1:
    parser.error("--nodes and --gpus_per_node must be >= 1")
  environment = job_environment(os.environ)
  if args.dry_run:
    print("# the job needs " + " ".join(f"{k}={shlex.quote(v)}" for k, v in environment.items())
          + " in the environment sbatch passes on", file=sys.stderr)
  else:
    make_workdir(args.workdir)
    os.environ.update(environment)  # sbatch hands its environment to the job (--export=ALL)
  return execute([sbatch_command(args, overrides)], args.dry_run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
