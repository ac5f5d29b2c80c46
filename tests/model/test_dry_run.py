"""Parameter counts of the real LLaVA-1.5 sizes, checked against independent counts."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from rlhfv_jax import model as model_lib
from rlhfv_jax.model import dry_run

from . import hf_reference as ref

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def formula_count(hf) -> int:
  """LLaVA parameter count from the HF config fields (CLIP ViT + MLP projector + Llama)."""
  v, t = hf.vision_config, hf.text_config
  d, ffn, patches = v.hidden_size, v.intermediate_size, (v.image_size // v.patch_size) ** 2
  vision = (d * v.num_channels * v.patch_size ** 2 + d + (patches + 1) * d  # Embeddings.
            + 2 * 2 * d  # pre_layrnorm + post_layernorm.
            + v.num_hidden_layers * (4 * (d * d + d) + 2 * 2 * d + 2 * d * ffn + ffn + d))
  h, head = t.hidden_size, t.head_dim
  projector = v.hidden_size * h + h + h * h + h
  layer = (h * t.num_attention_heads * head * 2 + h * t.num_key_value_heads * head * 2
           + 3 * h * t.intermediate_size + 2 * h)
  text = t.vocab_size * h + t.num_hidden_layers * layer + h
  lm_head = 0 if hf.tie_word_embeddings else t.vocab_size * h
  return vision + projector + text + lm_head


def torch_meta_count(hf) -> int:
  """What transformers itself allocates for this config (on the meta device: no memory)."""
  with ref.torch.device("meta"):
    model = ref.transformers.LlavaForConditionalGeneration(hf)
  return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size, low, high", [("7b", 7.0e9, 7.1e9), ("13b", 13.3e9, 13.4e9)])
def test_real_size_param_counts(size, low, high):
  cfg = model_lib.llava_config(size)
  counts = dry_run.param_counts(cfg)
  hf = model_lib.to_hf_config(cfg)
  assert counts["total"] == formula_count(hf) == torch_meta_count(hf)
  assert low < counts["total"] < high
  assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_formula_agrees_on_a_tied_gqa_variant():
  cfg = model_lib.llava_config("tiny", vocab_size=100)
  cfg.text.tie_word_embeddings = True
  hf = model_lib.to_hf_config(cfg)
  assert dry_run.param_counts(cfg)["total"] == formula_count(hf) == torch_meta_count(hf)


@pytest.mark.slow
def test_cli_prints_the_report():
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "rlhfv_jax.model.dry_run", "--size", "7b",
                        "--param_dtype", "bfloat16"], env=env, capture_output=True, text=True,
                       check=True, cwd=REPO_ROOT).stdout
  total = dry_run.param_counts(model_lib.llava_config("7b"))["total"]
  assert f"total: {total:>15,d}" in out
  assert "576 image tokens" in out and "(bfloat16)" in out
