"""Validates a model config and prints its parameter counts without allocating weights.

  python -m rlhfv_jax.model.dry_run --size 7b
  python -m rlhfv_jax.model.dry_run --size 13b --param_dtype bfloat16
  python -m rlhfv_jax.model.dry_run --family gemma3 --size 27b --param_dtype bfloat16
  python -m rlhfv_jax.model.dry_run --hf_config /path/to/llava-1.5-7b-hf

Shapes come from `jax.eval_shape` of the real `init`, so the counts are those of the
parameter tree training would use (all CLIP layers and `post_layernorm` included, as
in the HF checkpoints, even though LLaVA-1.5 leaves the last layer unused).
"""

from __future__ import annotations

import math
from typing import Sequence

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from rlhfv_jax import model as model_lib
from rlhfv_jax.model import families

_FAMILY = flags.DEFINE_enum("family", families.DEFAULT, list(families.names()),
                            "Model family of --size.")
_SIZE = flags.DEFINE_string("size", "7b", "Named model size of the family.")
_HF_CONFIG = flags.DEFINE_string("hf_config", None,
                                 "HF checkpoint directory / config.json; overrides --size.")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"],
                                 "Parameter dtype for the memory estimate.")


def param_counts(cfg: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter count per top-level module (vision_tower, ...) and "total"."""
  shapes = model_lib.param_shapes(cfg)
  counts = {name: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(subtree))
            for name, subtree in shapes.items()}
  counts["total"] = sum(counts.values())
  return counts


def report(cfg: ml_collections.ConfigDict) -> str:
  """Human-readable summary: architecture, image tokens, per-module counts, memory."""
  counts = param_counts(cfg)
  bytes_per_param = np.dtype(jax.numpy.dtype(cfg.param_dtype)).itemsize
  v, t = cfg.vision, cfg.text
  lines = [
      f"family: {model_lib.family_of(cfg).name}",
      f"vision: ViT {v.num_layers}L d={v.hidden_size} {v.image_size}px/{v.patch_size} -> "
      f"{model_lib.num_image_tokens(cfg)} image tokens",
      f"text:   {t.num_layers}L d={t.hidden_size} heads={t.num_heads}/{t.num_kv_heads} "
      f"ffn={t.intermediate_size} vocab={t.vocab_size} rope_theta={t.rope_theta:g}",
  ]
  for name, count in counts.items():
    lines.append(f"{name:>22}: {count:>15,d} params ({count / 1e9:.3f} B)")
  lines.append(f"{'params memory':>22}: {counts['total'] * bytes_per_param / 2**30:.2f} GiB "
               f"({cfg.param_dtype})")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _HF_CONFIG.value:
    cfg = model_lib.config_from_hf(_HF_CONFIG.value)
  else:
    cfg = model_lib.model_config(_FAMILY.value, _SIZE.value)
  cfg.param_dtype = _PARAM_DTYPE.value
  print(report(cfg))


if __name__ == "__main__":
  app.run(main)
