r"""Runs `rlhfv_jax.main` on every worker of a Cloud TPU VM pod slice.

  python launch/tpu_pod.py --tpu=NAME --zone=ZONE [--project=P] \
      --config=configs/llava15_ddpo.py --workdir=/mnt/runs/ddpo [--setup [--allow_dirty]] \
      [--dry_run] -- --config.init.hf_checkpoint=/mnt/models/llava-1.5-7b-hf ...

With --setup it first copies the repository this launcher belongs to (wherever it is run
from) to every worker and installs it there (with jax[tpu] of the pinned version). Exactly
the repository's tracked files are copied, as one .tar.gz archive made locally (not the
.venv, caches or run outputs next to them); the commit, the number of files and the
archive's size are printed (on stderr) before anything runs. A tree with modified or
staged tracked files is refused unless --allow_dirty, which copies the working-tree
versions of the tracked files; untracked files never count, they are never copied.

Every worker runs one process with --distributed; JAX finds the other workers by itself.
The workdir, dataset and checkpoint paths must be visible to all workers under the same
name (e.g. a gcsfuse or NFS mount). --dry_run prints the exact gcloud commands instead of
running them (stdout holds only the commands); with --setup it still makes the archive, in
a fresh temporary directory (never in the repository), and leaves it there so that what
would be copied can be inspected (`tar -tzf ARCHIVE`); a real run deletes it afterwards.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Sequence

from _common import execute, main_command, pinned_version, split_overrides

LIBTPU_INDEX = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
LAUNCH_DIR = os.path.dirname(os.path.abspath(__file__))
# Where the archive lands on each worker: relative, i.e. the home directory, like repo_dir.
REMOTE_ARCHIVE = "rlhfv_jax.tar.gz"
NAMES_SHOWN = 5  # files named in a refusal or a note


class SetupError(Exception):
  """The repository cannot be copied as asked (reported as an error, exit status 2)."""


@dataclass(frozen=True)
class Archive:
  """A local archive of a repository's tracked files.

  Attributes:
    path: the .tar.gz file.
    root: the repository it was made from.
    commit: the full hash of HEAD.
    files: how many files (and symlinks) it holds.
    size: its size in bytes.
    dirty: the tracked files whose working-tree version differs from HEAD (copied as
      they are in the working tree; empty unless allowed).
    untracked: the untracked files git does not ignore (not copied: a new module that was
      never `git add`ed would be missing on the workers).
  """
  path: str
  root: str
  commit: str
  files: int
  size: int
  dirty: tuple[str, ...]
  untracked: tuple[str, ...] = ()

  def describe(self) -> str:
    """What is copied: one line, and one more warning of untracked files that are not."""
    changes = f" plus uncommitted changes to {len(self.dirty)} file(s)" if self.dirty else ""
    text = (f"copying {self.files} tracked files of {self.root} at commit {self.commit[:12]}"
            f"{changes} ({human_size(self.size)} archive {self.path}); untracked and ignored "
            "files (.venv, caches, run outputs) are not copied")
    if self.untracked:
      text += (f"\nnote: {len(self.untracked)} untracked file(s) not ignored by git are not "
               f"copied either: {shorten(self.untracked)}")
    return text


def shorten(names: Sequence[str]) -> str:
  """The first few names, and how many more."""
  more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
  return ", ".join(names[:NAMES_SHOWN]) + more


def human_size(size: int) -> str:
  """`size` bytes in B, KiB, MiB or GiB."""
  for unit in ("B", "KiB", "MiB"):
    if size < 1024:
      return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
    size /= 1024
  return f"{size:.1f} GiB"


def git(root: str, *args: str) -> str:
  """Runs `git -C root ARGS` and returns its stdout; raises SetupError when it fails."""
  try:
    proc = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)
  except FileNotFoundError as e:
    raise SetupError("--setup needs git to find the repository's tracked files") from e
  if proc.returncode:
    raise SetupError(f"`git {' '.join(args)}` failed in {root}: {proc.stderr.strip()}")
  return proc.stdout


def repo_root(directory: str = LAUNCH_DIR) -> str:
  """The root of the rlhfv_jax git repository that holds `directory`.

  Args:
    directory: a directory inside the repository (by default this launcher's own).

  Raises:
    SetupError: naming `directory` when it is not inside a git repository, or the root
      when it is not this project's (no rlhfv_jax/ package in it).
  """
  try:
    root = git(directory, "rev-parse", "--show-toplevel").strip()
  except SetupError as e:
    raise SetupError(f"{directory} is not inside a git repository, so --setup cannot tell "
                     f"which files to copy: run the launcher of a git checkout of rlhfv_jax "
                     f"({e})") from e
  if not os.path.isdir(os.path.join(root, "rlhfv_jax")):
    raise SetupError(f"{root} (the git repository holding {directory}) has no rlhfv_jax/ "
                     "package: it is not a checkout of rlhfv_jax")
  return root


def dirty_files(root: str) -> list[str]:
  """Tracked files whose working-tree or staged version differs from HEAD (untracked files
  are not copied, so they do not count)."""
  # `git diff HEAD` covers modified, staged, added and deleted files and, unlike
  # `git status`, never rewrites the index.
  out = git(root, "diff", "--name-only", "-z", "--no-renames", "HEAD", "--")
  return [name for name in out.split("\0") if name]


def tracked_files(root: str) -> list[str]:
  """The paths (relative to root) of the files in git's index."""
  return [name for name in git(root, "ls-files", "-z").split("\0") if name]


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
  # The local user's ids mean nothing on the workers.
  info.uid = info.gid = 0
  info.uname = info.gname = ""
  return info


def make_archive(root: str, directory: str, *, allow_dirty: bool = False) -> Archive:
  """Writes a .tar.gz of the tracked files of the repository at `root` into `directory`.

  The files are read from the working tree: without allow_dirty it is refused unless they
  are the versions committed at HEAD; with it, their working-tree versions are archived
  (a tracked file deleted in the working tree is left out).

  Args:
    root: the repository's root.
    directory: where to write the archive (an existing directory outside the repository).
    allow_dirty: archive the working-tree versions of modified or staged tracked files
      instead of refusing.

  Returns:
    The Archive.

  Raises:
    SetupError: when the repository has no commit, or has dirty tracked files and not
      allow_dirty (naming the first few and the flag).
  """
  try:
    commit = git(root, "rev-parse", "--verify", "HEAD").strip()
  except SetupError as e:
    raise SetupError(f"{root} has no commit to copy ({e})") from e
  dirty = dirty_files(root)
  if dirty and not allow_dirty:
    raise SetupError(f"{root} has uncommitted changes to tracked files ({shorten(dirty)}): "
                     "commit them, or pass --allow_dirty to copy the working-tree versions "
                     "(untracked files do not count: they are never copied)")
  path = os.path.join(directory, f"rlhfv_jax-{commit[:12]}.tar.gz")
  count = 0
  with tarfile.open(path, "w:gz") as tar:
    for name in tracked_files(root):
      full = os.path.join(root, name)
      if not os.path.lexists(full):  # deleted in the working tree (only with allow_dirty)
        continue
      # recursive=False: a submodule is a directory entry only, like in `git archive`.
      tar.add(full, arcname=name, recursive=False, filter=_normalize)
      count += 1
  untracked = git(root, "ls-files", "-z", "--others", "--exclude-standard").split("\0")
  return Archive(path=path, root=root, commit=commit, files=count, size=os.path.getsize(path),
                 dirty=tuple(dirty), untracked=tuple(name for name in untracked if name))


def gcloud_ssh(args: argparse.Namespace, remote: str) -> list[str]:
  command = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, f"--zone={args.zone}"]
  if args.project:
    command.append(f"--project={args.project}")
  return command + ["--worker=all", "--command", remote]


def commands(args: argparse.Namespace, overrides: list[str],
             archive: str | None = None) -> list[list[str]]:
  """The gcloud commands to run, in order.

  Args:
    args: the launcher's arguments.
    overrides: the config overrides passed on to rlhfv_jax.main.
    archive: with args.setup, the local archive of the repository to copy.
  """
  repo = shlex.quote(args.repo_dir)
  out = []
  if args.setup:
    if archive is None:
      raise ValueError("--setup needs the repository's archive")
    copy = ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive,
            f"{args.tpu}:{REMOTE_ARCHIVE}", f"--zone={args.zone}", "--worker=all"]
    if args.project:
      copy.insert(-1, f"--project={args.project}")
    out.append(copy)
    install = (f"mkdir -p {repo} && tar -xzf {REMOTE_ARCHIVE} -C {repo} && rm {REMOTE_ARCHIVE}"
               f" && cd {repo} && python3 -m venv .venv && .venv/bin/pip install -q "
               f'-r requirements.txt "jax[tpu]=={pinned_version("jax")}" -f {LIBTPU_INDEX}')
    out.append(gcloud_ssh(args, install))
  train = main_command(args.config, args.workdir, overrides, python=".venv/bin/python")
  out.append(gcloud_ssh(args, f"cd {repo} && {shlex.join(train)}"))
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
  parser.add_argument("--setup", action="store_true",
                      help="copy the repo's tracked files to the workers and install it first")
  parser.add_argument("--allow_dirty", action="store_true",
                      help="with --setup: copy modified tracked files as they are instead of "
                           "refusing")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the commands only (--setup still makes the archive, in a "
                           "temporary directory, and keeps it for inspection)")
  args = parser.parse_args(own)
  if args.allow_dirty and not args.setup:
    parser.error("--allow_dirty only applies with --setup")
  if not args.setup:
    return execute(commands(args, overrides), args.dry_run)
  # Everything that can refuse happens here, before any gcloud command runs.
  directory = tempfile.mkdtemp(prefix="rlhfv_jax-setup-")
  try:
    archive = make_archive(repo_root(), directory, allow_dirty=args.allow_dirty)
  except SetupError as e:
    shutil.rmtree(directory, ignore_errors=True)
    print(f"{parser.prog}: error: {e}", file=sys.stderr)
    return 2
  # On stderr: stdout stays exactly the commands (a dry run's output is a shell script).
  print(archive.describe(), file=sys.stderr, flush=True)
  if args.dry_run:
    print(f"dry run: archive kept for inspection: tar -tzf {archive.path}", file=sys.stderr,
          flush=True)
    return execute(commands(args, overrides, archive.path), dry_run=True)
  try:
    return execute(commands(args, overrides, archive.path), dry_run=False)
  finally:
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
