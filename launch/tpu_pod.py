r"""Runs `rlhfv_jax.main` on every worker of a Cloud TPU VM pod slice.

  python launch/tpu_pod.py --tpu=NAME --zone=ZONE [--project=P] \
      --config=configs/llava15_ddpo.py --workdir=/mnt/runs/ddpo [--setup] [--dry_run] \
      -- --config.init.hf_checkpoint=/mnt/models/llava-1.5-7b-hf ...

With --setup it first copies this repository (run it from a clean checkout) to every
worker and installs it there (with jax[tpu] of the pinned version). Every worker runs one process with --distributed; JAX
finds the other workers by itself. The workdir, dataset and checkpoint paths must be
visible to all workers under the same name (e.g. a gcsfuse or NFS mount). --dry_run
prints the exact gcloud commands instead of running them.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from _common import execute, main_command, pinned_version, split_overrides

LIBTPU_INDEX = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"


def gcloud_ssh(args: argparse.Namespace, remote: str) -> list[str]:
  command = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, f"--zone={args.zone}"]
  if args.project:
    command.append(f"--project={args.project}")
  return command + ["--worker=all", "--command", remote]


def commands(args: argparse.Namespace, overrides: list[str]) -> list[list[str]]:
  repo = args.repo_dir
  out = []
  if args.setup:
    copy = ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", ".",
            f"{args.tpu}:{repo}", f"--zone={args.zone}", "--worker=all"]
    if args.project:
      copy.insert(-1, f"--project={args.project}")
    out.append(copy)
    install = (f"cd {shlex.quote(repo)} && python3 -m venv .venv && .venv/bin/pip install -q "
               f'-r requirements.txt "jax[tpu]=={pinned_version("jax")}" -f {LIBTPU_INDEX}')
    out.append(gcloud_ssh(args, install))
  train = main_command(args.config, args.workdir, overrides, python=".venv/bin/python")
  out.append(gcloud_ssh(args, f"cd {shlex.quote(repo)} && {shlex.join(train)}"))
  return out


def main(argv: list[str]) -> int:
  own, overrides = split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tpu", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default="")
  parser.add_argument("--config", required=True, help="config file[:variant]")
  parser.add_argument("--workdir", required=True, help="shared run directory")
  parser.add_argument("--repo_dir", default="rlhfv_jax", help="repo path on the workers")
  parser.add_argument("--setup", action="store_true", help="copy and install the repo first")
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  args = parser.parse_args(own)
  return execute(commands(args, overrides), args.dry_run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
