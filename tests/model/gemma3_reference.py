"""Tiny random HF PyTorch Gemma 3 models: the independent reference for Gemma 3 tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB_SIZE = 128
IMAGE_TOKEN_ID = 120
BOI_TOKEN_ID, EOI_TOKEN_ID = 118, 119
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID = 0, 2, 1
IMAGE_SIZE = 32
NUM_IMAGE_TOKENS = 4  # the 4x4 patch grid pooled 2x2


@dataclasses.dataclass(frozen=True)
class TinySpec:
  """Knobs of a tiny HF Gemma 3 reference model.

  The defaults have both layer kinds, a sliding window shorter than the test
  sequences, a query_pre_attn_scalar that is not head_dim, linear RoPE scaling on the
  global layers, and grouped-query attention.
  """
  layer_types: tuple[str, ...] = ("sliding_attention", "full_attention", "sliding_attention")
  sliding_window: int = 5
  query_pre_attn_scalar: int = 24
  rope_factor: float = 8.0
  rope_theta: float = 1000.0
  rope_local_theta: float = 100.0
  tie_word_embeddings: bool = True
  mm_tokens_per_image: int = NUM_IMAGE_TOKENS


def hf_gemma3_config(spec: TinySpec = TinySpec()):
  """A tiny `Gemma3Config`: 32px images, 8px patches (16 patches), hidden 32/64."""
  vision = transformers.SiglipVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      image_size=IMAGE_SIZE, patch_size=8, vision_use_head=False)
  full = {"rope_type": "default", "rope_theta": spec.rope_theta}
  if spec.rope_factor != 1.0:
    full.update(rope_type="linear", factor=spec.rope_factor)
  text = transformers.Gemma3TextConfig(
      vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96,
      num_hidden_layers=len(spec.layer_types), num_attention_heads=4, num_key_value_heads=2,
      head_dim=16, query_pre_attn_scalar=spec.query_pre_attn_scalar,
      sliding_window=spec.sliding_window, layer_types=list(spec.layer_types),
      max_position_embeddings=256, pad_token_id=PAD_TOKEN_ID, bos_token_id=BOS_TOKEN_ID,
      eos_token_id=EOS_TOKEN_ID, tie_word_embeddings=spec.tie_word_embeddings,
      rope_parameters={"full_attention": full,
                       "sliding_attention": {"rope_type": "default",
                                             "rope_theta": spec.rope_local_theta}})
  return transformers.Gemma3Config(
      vision_config=vision, text_config=text, mm_tokens_per_image=spec.mm_tokens_per_image,
      image_token_index=IMAGE_TOKEN_ID, boi_token_index=BOI_TOKEN_ID,
      eoi_token_index=EOI_TOKEN_ID, tie_word_embeddings=spec.tie_word_embeddings)


def randomize_(model, seed: int) -> None:
  """Overwrites HF's init (zero projector, zero-centred norms) with O(1)-scale weights.

  Gemma RMSNorm weights are zero-centred (the norm scales by 1 + w): they get N(0, 0.3)
  so a wrong "1 +" shows; LayerNorm scales 1 + N(0, 0.1); everything else N(0, 0.1).
  """
  gen = torch.Generator().manual_seed(seed)
  layer_norms = {name for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=gen)
      module, _, leaf = name.rpartition(".")
      if module in layer_norms and leaf == "weight":
        param.copy_(1.0 + 0.1 * noise)
      elif "norm" in module and leaf == "weight":
        param.copy_(0.3 * noise)
      else:
        param.copy_(0.1 * noise)


def build_hf_gemma3(spec: TinySpec = TinySpec(), seed: int = 0):
  """A random tiny `Gemma3ForConditionalGeneration` (eager attention, f32, eval mode)."""
  torch.manual_seed(seed)
  config = hf_gemma3_config(spec)
  config._attn_implementation = "eager"
  for sub in (config.text_config, config.vision_config):
    sub._attn_implementation = "eager"
  model = transformers.Gemma3ForConditionalGeneration(config)
  randomize_(model, seed)
  return model.eval()


def make_rows(lengths, length: int, *, images=None, left_pad: bool = False, seed: int = 0):
  """Token rows: BOS, text, [<start_of_image>, 4 placeholders, <end_of_image>], text.

  Args:
    lengths: real tokens per row.
    length: the padded row length.
    images: per row, whether it holds an image (default: all do).
    left_pad: pad on the left instead of the right.
    seed: of the text tokens.

  Returns:
    (input_ids [N, T] int32, attention_mask [N, T] bool).
  """
  rng = np.random.default_rng(seed)
  images = [True] * len(lengths) if images is None else images
  ids = np.full((len(lengths), length), PAD_TOKEN_ID, np.int32)
  mask = np.zeros((len(lengths), length), bool)
  for row, (n, has_image) in enumerate(zip(lengths, images)):
    block = ([BOI_TOKEN_ID] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + [EOI_TOKEN_ID]
             if has_image else [])
    text = rng.integers(3, BOI_TOKEN_ID, size=n - len(block) - 1)
    lead = 1 + row % 3  # the image starts at a different offset in each row
    seq = np.concatenate([[BOS_TOKEN_ID], text[:lead], block, text[lead:]])
    start = length - n if left_pad else 0
    ids[row, start:start + n] = seq
    mask[row, start:start + n] = True
  return ids, mask


def random_pixels(num_images: int, seed: int = 0) -> np.ndarray:
  """Stand-in for processed images: [B, 32, 32, 3] float32 NHWC, roughly unit scale."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(num_images, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def torch_inputs(input_ids, attention_mask, pixels_nhwc=None) -> dict:
  """HF keyword inputs, `token_type_ids` included (1 at image placeholders: the
  bidirectional image attention)."""
  ids = torch.from_numpy(np.asarray(input_ids, np.int64))
  out = dict(input_ids=ids, attention_mask=torch.from_numpy(np.asarray(attention_mask, np.int64)),
             token_type_ids=(ids == IMAGE_TOKEN_ID).long())
  if pixels_nhwc is not None:
    out["pixel_values"] = torch.from_numpy(np.transpose(pixels_nhwc, (0, 3, 1, 2)).copy())
  return out


def torch_logits(model, input_ids, attention_mask, pixels_nhwc=None) -> np.ndarray:
  """HF logits [N, T, V] as numpy."""
  with torch.no_grad():
    out = model(**torch_inputs(input_ids, attention_mask, pixels_nhwc))
  return out.logits.float().numpy()
