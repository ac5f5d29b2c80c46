"""Shared by the launchers: the training command and dry-run / run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Sequence

REQUIREMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "requirements.txt")


def pinned_version(package: str) -> str:
  """The version `requirements.txt` pins `package` to."""
  with open(REQUIREMENTS) as f:
    for line in f:
      name, sep, version = line.split("#")[0].strip().partition("==")
      if sep and name.lower() == package.lower():
        return version.strip()
  raise ValueError(f"{REQUIREMENTS} does not pin {package}")


def main_command(config: str, workdir: str, overrides: Sequence[str], *,
                 python: str = "python3") -> list[str]:
  """`python -m rlhfv_jax.main` for one process of a multi-host run (cluster
  auto-detection through --distributed)."""
  return [python, "-m", "rlhfv_jax.main", f"--config={config}", f"--workdir={workdir}",
          "--distributed", *overrides]


def execute(commands: Sequence[Sequence[str]], dry_run: bool) -> int:
  """Prints each command (shell-quoted, one per line); runs them in order unless dry_run."""
  for command in commands:
    print(shlex.join(command), flush=True)
    if not dry_run:
      status = subprocess.run(list(command)).returncode
      if status:
        print(f"command failed with status {status}", file=sys.stderr)
        return status
  return 0


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits `launcher args -- main overrides` at the first '--'."""
  argv = list(argv)
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []
