"""Tiny random HF PyTorch LLaVA models: the independent reference for model tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IMAGE_TOKEN_ID = 120
PAD_TOKEN_ID = 0
VOCAB_SIZE = 128


@dataclasses.dataclass(frozen=True)
class TinySpec:
  """Knobs of a tiny HF LLaVA reference model."""
  num_kv_heads: int = 2
  feature_layer: int = -2
  rope_theta: float = 10000.0
  feature_select_strategy: str = "default"
  tie_word_embeddings: bool = False


def hf_llava_config(spec: TinySpec):
  """A tiny `LlavaConfig`: 32px images, 8px patches (16 patches), hidden 32/64."""
  vision = transformers.CLIPVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
      image_size=32, patch_size=8, hidden_act="quick_gelu")
  text = transformers.LlamaConfig(
      vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=spec.num_kv_heads,
      max_position_embeddings=128, rms_norm_eps=1e-5, pad_token_id=PAD_TOKEN_ID,
      rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
      tie_word_embeddings=spec.tie_word_embeddings)
  num_tokens = 16 + (spec.feature_select_strategy == "full")
  return transformers.LlavaConfig(
      vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
      image_seq_length=num_tokens, vision_feature_layer=spec.feature_layer,
      vision_feature_select_strategy=spec.feature_select_strategy,
      tie_word_embeddings=spec.tie_word_embeddings)


def randomize_(model, seed: int) -> None:
  """Overwrites HF's near-zero init with O(1)-scale weights so logits are informative."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      is_norm_scale = "norm" in name and name.endswith("weight")
      param.copy_(1.0 + 0.1 * noise if is_norm_scale else 0.1 * noise)


def build_hf_llava(spec: TinySpec, seed: int = 0):
  """A random tiny `LlavaForConditionalGeneration` (eager attention, f32, eval mode)."""
  torch.manual_seed(seed)
  model = transformers.LlavaForConditionalGeneration(hf_llava_config(spec))
  randomize_(model, seed)
  model.config._attn_implementation = "eager"
  for sub in (model.config.text_config, model.config.vision_config):
    sub._attn_implementation = "eager"
  return model.eval()


def make_prompts(num_rows: int, length: int, num_image_tokens: int, lengths, *,
                 left_pad: bool = False, seed: int = 0):
  """Token batch: BOS, a few text tokens, the image placeholders, more text; padded.

  Returns (input_ids [N, T] int32, attention_mask [N, T] bool).
  """
  rng = np.random.default_rng(seed)
  ids = np.full((num_rows, length), PAD_TOKEN_ID, np.int32)
  mask = np.zeros((num_rows, length), bool)
  for row, n in enumerate(lengths):
    text = rng.integers(3, IMAGE_TOKEN_ID, size=n - num_image_tokens - 1)
    lead = 1 + row % 3  # Image placeholders start at different offsets per row.
    seq = np.concatenate([[1], text[:lead], [IMAGE_TOKEN_ID] * num_image_tokens, text[lead:]])
    start = length - n if left_pad else 0
    ids[row, start:start + n] = seq
    mask[row, start:start + n] = True
  return ids, mask


def random_pixels(num_images: int, seed: int = 0) -> np.ndarray:
  """Stand-in for processed images: [B, 32, 32, 3] float32 NHWC, roughly unit scale."""
  return np.random.default_rng(seed).normal(size=(num_images, 32, 32, 3)).astype(np.float32)


def torch_logits(model, input_ids, attention_mask, pixel_values_nhwc, **kwargs):
  """HF logits [N, T, V] as numpy (pixels given NHWC, passed NCHW)."""
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(np.asarray(input_ids, np.int64)),
                attention_mask=torch.from_numpy(np.asarray(attention_mask, np.int64)),
                pixel_values=torch.from_numpy(np.transpose(pixel_values_nhwc, (0, 3, 1, 2))),
                **kwargs)
  return out.logits.float().numpy()
