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
TOKENIZER_MODEL = (REPO_ROOT / ".." / "shared" / "data" / "llama2-tokenizer.model").resolve()


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
  """Path to the real LLaVA-1.5 / Vicuna SentencePiece model (shared/, not in the repo)."""
  if not TOKENIZER_MODEL.exists():
    pytest.fail(f"missing {TOKENIZER_MODEL}: the suite needs ../shared/data beside the repo")
  return TOKENIZER_MODEL
