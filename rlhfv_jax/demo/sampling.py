"""Descriptions from the model: batched `model.generate.generate` over demo images.

Used twice by the pipeline: to sample the responses the oracle corrects (the
feedback the paper collects from humans) and to produce greedy descriptions of
held-out scenes for evaluation.

Prompts are built by the same `ChatTemplate` the training data goes through and
left-padded to the longest prompt of the call; batches have a fixed size (the last one is padded
with repeats of its first row and the extra outputs dropped), so generation
compiles once per (batch, prompt length, max_new_tokens).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from rlhfv_jax.data.images import ImagePreprocessor
from rlhfv_jax.data.tokenizer import ChatTemplate
from rlhfv_jax.model import generate as generate_lib


def left_pad(rows: Sequence[Sequence[int]], pad_id: int,
             length: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token rows to `length` (default: the longest row).

  Returns:
    (ids [N, length] int32, mask [N, length] bool).
  """
  length = max(len(r) for r in rows) if length is None else length
  if any(len(r) > length for r in rows):
    raise ValueError(f"a row is longer than the padded length {length}")
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, row in enumerate(rows):
    ids[i, length - len(row):] = row
    mask[i, length - len(row):] = True
  return ids, mask


def decode_response(template: ChatTemplate, tokens: Sequence[int]) -> tuple[str, bool]:
  """Text of generated `tokens` up to the first EOS, and whether an EOS was emitted."""
  tokens = [int(t) for t in tokens]
  eos = template.tokenizer.eos_id
  finished = eos in tokens
  if finished:
    tokens = tokens[:tokens.index(eos)]
  return template.tokenizer.decode(tokens).strip(), finished


def describe_images(params: Any, model_config: ml_collections.ConfigDict,
                    template: ChatTemplate, preprocessor: ImagePreprocessor,
                    images: Sequence[bytes], prompts: Sequence[str], *,
                    max_new_tokens: int, batch_size: int, temperature: float = 0.0,
                    top_p: float = 1.0, rng: Optional[jax.Array] = None
                    ) -> tuple[list[str], list[bool]]:
  """Generates one response per (image, prompt).

  Args:
    params: model parameters.
    model_config: the model config.
    template: chat template (tokenizer, image tokens, system message).
    preprocessor: image preprocessing (no augmentation).
    images: encoded images.
    prompts: one instruction per image.
    max_new_tokens: response length limit in tokens.
    batch_size: rows per generate call.
    temperature: 0 for greedy decoding, else the sampling temperature.
    top_p: nucleus mass when sampling.
    rng: PRNG key, required when sampling; the batch starting at row s uses
      `fold_in(rng, s)`.

  Returns:
    (texts, finished): the responses cut at EOS, and whether each ended with EOS
    (False = cut by `max_new_tokens`).
  """
  if len(images) != len(prompts):
    raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
  if temperature > 0 and rng is None:
    raise ValueError("sampling (temperature > 0) needs an rng")
  tok = template.tokenizer
  prompt_rows = [template.encode_prompt(p) for p in prompts]
  prompt_length = max(len(r) for r in prompt_rows)  # one length for all: one compilation
  texts, finished = [], []
  for start in range(0, len(images), batch_size):
    rows = prompt_rows[start:start + batch_size]
    pixels = [preprocessor(image) for image in images[start:start + batch_size]]
    real = len(rows)
    rows += [rows[0]] * (batch_size - real)
    pixels += [pixels[0]] * (batch_size - real)
    ids, mask = left_pad(rows, tok.pad_id, prompt_length)
    out = generate_lib.generate(
        params, model_config, ids, mask, np.stack(pixels), max_new_tokens=max_new_tokens,
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, temperature=temperature,
        top_p=top_p, rng=None if rng is None else jax.random.fold_in(rng, start))
    for row in np.asarray(out)[:real]:
      text, done = decode_response(template, row)
      texts.append(text)
      finished.append(done)
  return texts, finished
