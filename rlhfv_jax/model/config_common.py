"""What every family's model config holds and checks the same way: the run settings
(compute / storage dtypes, remat, LM-head chunking, LoRA) and the checks of the fields
all families share. Each family's ``config.py`` adds its architecture."""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from rlhfv_jax.model import lora as lora_lib

DTYPES = ("float32", "bfloat16", "float16")


def run_settings(logits_chunk: int = 0) -> dict[str, Any]:
  """The fields a run sets rather than a checkpoint (`model_init.RUN_SETTINGS`), at their
  defaults: float32 compute and storage, no remat, `logits_chunk` tokens per LM-head
  chunk in the losses (0: all at once), LoRA off."""
  return dict(dtype="float32", param_dtype="float32", remat=False, logits_chunk=logits_chunk,
              lora=lora_lib.default_config())


def shared_problems(cfg: ml_collections.ConfigDict, family: str,
                    token_fields: Sequence[str]) -> list[str]:
  """Problems of the fields every family has: the family name, the token ids
  (`token_fields`) inside the vocabulary, the dtypes, the chunking, LoRA."""
  problems = []
  if cfg.get("family", family) != family:
    problems.append(f"family={cfg.family!r} is not {family!r}")
  for name in token_fields:
    if not 0 <= cfg[name] < cfg.text.vocab_size:
      problems.append(f"{name}={cfg[name]} is outside the vocabulary "
                      f"[0, text.vocab_size={cfg.text.vocab_size})")
  for name in ("dtype", "param_dtype"):
    if cfg[name] not in DTYPES:
      problems.append(f"{name}={cfg[name]!r} must be float32, bfloat16 or float16")
  if int(cfg.get("logits_chunk", 0) or 0) < 0:
    problems.append(f"logits_chunk={cfg.logits_chunk} must be >= 0 (0: no chunking)")
  return problems + lora_lib.problems(cfg)


def raise_problems(problems: Sequence[str]) -> None:
  """The one error of an invalid model config, naming every problem."""
  if problems:
    raise ValueError("Invalid model config: " + "; ".join(problems))
