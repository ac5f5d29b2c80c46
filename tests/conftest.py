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


# Text of the tokenizer below: the chat template's fixed text and short image descriptions,
# so that the tests' words are whole pieces, as most English words are in Llama-2's model.
_SENTENCEPIECE_TEXT = (
    "USER: <image>\nWhat is in the picture? ASSISTANT: A cat.",
    "There is a blue mug on the wooden table. There is a red cup on the wooden table.",
    "A dog sleeps on a sofa next to a lamp. A dog sleeps on a sofa next to a cat and a lamp.",
    "What color is the car? The car is green. The car is yellow. The cup is small.",
    "What is on the table? Describe the image. What is it? How many are there? Where is it?",
    "It sits near a window with white curtains and a small green plant.",
    "A small green plant stands near the window. Two dogs run in the park; the sky is grey.",
    "The man holds a brown book and a black phone. Three birds fly over the river.",
)
LLAMA_PIECES = 32000  # the Llama-2 model's pieces; LLaVA-1.5's <image> is the next id


def train_llava_layout_tokenizer(path: pathlib.Path) -> pathlib.Path:
  """Writes a tiny SentencePiece model with the Llama-2 / LLaVA-1.5 id layout to `path`.

  Llama-2's conventions: BPE, ``<unk>``=0, ``<s>``=1, ``</s>``=2, no pad, byte fallback
  (any text encodes; ``<0x00>``..``<0xFF>`` are ids 3..258), split digits, a dummy prefix,
  text kept as written. About 840 pieces are learned from `_SENTENCEPIECE_TEXT`; unused
  ones fill the vocabulary up to Llama's 32000, so that ``<image>`` is id 32000 as with the
  real model and in the tiny model configs (``image_token_id=32000``). The demo's
  vocabulary (`rlhfv_jax.demo.vocabulary`) is another thing: ~300 ids for its closed
  world, no byte fallback. Deterministic: one thread, no sampling of the input.

  Returns:
    `path`.
  """
  import io
  import sentencepiece
  from sentencepiece import sentencepiece_model_pb2
  from rlhfv_jax.data.tokenizer import VICUNA_V1_SYSTEM
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter((VICUNA_V1_SYSTEM,) + _SENTENCEPIECE_TEXT), model_writer=model,
      vocab_size=LLAMA_PIECES, hard_vocab_limit=False, model_type="bpe",
      character_coverage=1.0, byte_fallback=True, split_digits=True,
      allow_whitespace_only_pieces=True, normalization_rule_name="identity",
      remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2)
  proto = sentencepiece_model_pb2.ModelProto.FromString(model.getvalue())
  unused = sentencepiece_model_pb2.ModelProto.SentencePiece.UNUSED
  for k in range(len(proto.pieces), LLAMA_PIECES):
    proto.pieces.add(piece=f"<unused{k}>", score=0.0, type=unused)
  proto.trainer_spec.vocab_size = LLAMA_PIECES
  path.write_bytes(proto.SerializeToString())
  return path


@pytest.fixture(scope="session")
def sentencepiece_tokenizer_path(tmp_path_factory) -> pathlib.Path:
  """A SentencePiece model trained in code (`train_llava_layout_tokenizer`): for the tests
  that need a tokenizer, not Llama-2's vocabulary; unlike that one, it is always there."""
  return train_llava_layout_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model")


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


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: subprocess / end-to-end tests (CI runs them; a quick local pass is "
      "`pytest -m 'not slow' tests`)")
