r"""Submits `rlhfv_jax.main` to SLURM: one process per node, every GPU of the node.

  python launch/slurm_gpu.py --nodes=2 --gpus_per_node=8 --time=24:00:00 \
      --config=configs/llava15_ddpo.py:13b --workdir=/shared/runs/ddpo13b [--dry_run] \
      -- --config.init.hf_checkpoint=/shared/models/llava-1.5-13b-hf ...

It runs `sbatch launch/slurm_gpu.sbatch CONFIG WORKDIR OVERRIDES...`; the batch script
starts the processes with srun and --distributed (JAX reads the SLURM environment). The
workdir must be on a filesystem every node sees; the job log goes to
WORKDIR/slurm-<jobid>.out. --dry_run prints the sbatch command instead of submitting it.
"""

from __future__ import annotations

import argparse
import os
import sys

from _common import execute, split_overrides

SBATCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slurm_gpu.sbatch")


def sbatch_command(args: argparse.Namespace, overrides: list[str]) -> list[str]:
  command = ["sbatch", f"--nodes={args.nodes}", f"--gpus-per-node={args.gpus_per_node}",
             f"--time={args.time}", f"--job-name={args.job_name}",
             f"--output={os.path.join(args.workdir, 'slurm-%j.out')}"]
  if args.partition:
    command.append(f"--partition={args.partition}")
  if args.account:
    command.append(f"--account={args.account}")
  return command + [os.path.relpath(SBATCH_SCRIPT), args.config, args.workdir, *overrides]


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
  return execute([sbatch_command(args, overrides)], args.dry_run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
