"""Suite-wide set-up: 4 forced CPU devices so that pmap / sharding paths are exercised.

XLA reads XLA_FLAGS once, when jax initialises its backend, so this must run before
any test imports jax.
"""

import os
import pathlib

import pytest

_TEST_XLA_FLAGS = (
    "--xla_force_host_platform_device_count=4",
    # Tests are dominated by compiling many tiny programs; skipping XLA's backend
    # optimisation passes roughly halves suite time and leaves results unchanged.
    "--xla_backend_optimization_level=0",
)
for _flag in _TEST_XLA_FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# The real LLaVA-1.5 / Vicuna (Llama-2) SentencePiece model is not in the repository: the
# tests that need it find it through this variable, else in ../shared/data beside the
# clone, else they skip with `_TOKENIZER_HOWTO`. CI sets REQUIRE_VAR=1 so that a missing
# tokenizer fails there instead of silently skipping coverage.
LLAMA_TOKENIZER_VAR = "RLHFV_LLAMA_TOKENIZER"
REQUIRE_LLAMA_TOKENIZER_VAR = "RLHFV_REQUIRE_LLAMA_TOKENIZER"
_SHARED_TOKENIZER = REPO_ROOT / ".." / "shared" / "data" / "llama2-tokenizer.model"
_TOKENIZER_HOWTO = (
    f"needs the Llama-2 tokenizer: set {LLAMA_TOKENIZER_VAR}=/path/to/tokenizer.model "
    "(e.g. the tokenizer.model of any llava-hf/llava-1.5 checkpoint) or put it at "
    "../shared/data/llama2-tokenizer.model beside the repository")


def find_llama_tokenizer() -> pathlib.Path | None:
  """The real Llama-2 tokenizer model if one is provided, else None."""
  configured = os.environ.get(LLAMA_TOKENIZER_VAR)
  if configured:
    path = pathlib.Path(configured).expanduser().resolve()
    if not path.is_file():
      raise FileNotFoundError(f"{LLAMA_TOKENIZER_VAR}={configured}: no such file")
    return path
  return _SHARED_TOKENIZER.resolve() if _SHARED_TOKENIZER.is_file() else None


@pytest.fixture
def user_env() -> dict[str, str]:
  """The environment for a subprocess that runs a command as a user would: this process's
  environment without the suite's test-only XLA flags above (forced devices, no backend
  optimisation), on CPU."""
  suite_flags = {flag.split("=")[0] for flag in _TEST_XLA_FLAGS}
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if f.split("=")[0] not in suite_flags)
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.fixture(scope="session")
def llama_tokenizer_path() -> pathlib.Path:
  """Path to the real LLaVA-1.5 / Vicuna SentencePiece model (not in the repo).

  Skips the requesting test when none is provided, unless the run requires it (CI)."""
  path = find_llama_tokenizer()
  if path is None:
    if os.environ.get(REQUIRE_LLAMA_TOKENIZER_VAR) == "1":
      pytest.fail(f"{REQUIRE_LLAMA_TOKENIZER_VAR}=1 and no tokenizer: {_TOKENIZER_HOWTO}")
    pytest.skip(_TOKENIZER_HOWTO)
  return path


def pytest_terminal_summary(terminalreporter):
  """One line at the end of the run when tests were skipped for want of the tokenizer."""
  skipped = [r for r in terminalreporter.stats.get("skipped", ())
             if _TOKENIZER_HOWTO in str(r.longrepr)]
  if skipped:
    terminalreporter.write_line(f"{len(skipped)} tests skipped: {_TOKENIZER_HOWTO}")
