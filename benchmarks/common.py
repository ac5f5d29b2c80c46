"""What several benchmarks share."""

from __future__ import annotations

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def llama_tokenizer_path() -> pathlib.Path:
  """The Llama-2 tokenizer: RLHFV_LLAMA_TOKENIZER, else ../shared/data beside the repo (as
  for the tests); exits with how to provide it otherwise."""
  path = pathlib.Path(os.environ.get("RLHFV_LLAMA_TOKENIZER") or
                      REPO / ".." / "shared" / "data" / "llama2-tokenizer.model")
  if not path.is_file():
    raise SystemExit("needs the Llama-2 tokenizer: set RLHFV_LLAMA_TOKENIZER=/path/to/"
                     "tokenizer.model")
  return path


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo; else what `platform` knows), for printed numbers."""
  import platform
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()
