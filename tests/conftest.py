"""Suite-wide set-up: 4 forced CPU devices so that pmap / sharding paths are exercised.

XLA reads XLA_FLAGS once, when jax initialises its backend, so this must run before
any test imports jax.
"""

import os
import pathlib

import pytest

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKENIZER_MODEL = (REPO_ROOT / ".." / "shared" / "data" / "llama2-tokenizer.model").resolve()


@pytest.fixture(scope="session")
def llama_tokenizer_path() -> pathlib.Path:
  """Path to the real LLaVA-1.5 / Vicuna SentencePiece model (shared/, not in the repo)."""
  if not TOKENIZER_MODEL.exists():
    pytest.fail(f"missing {TOKENIZER_MODEL}: the suite needs ../shared/data beside the repo")
  return TOKENIZER_MODEL
