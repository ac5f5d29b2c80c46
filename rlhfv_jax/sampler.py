"""Text in, text out: the one sampler every generating caller uses.

(image, instruction) pairs → chat template → left-padded prompt ids + preprocessed
pixels → the project's KV-cache `model.generate.generate` → decoded answers. The demo
(feedback sampling and evaluation), evaluation stages and the sampling stage all call
`Sampler`, never a generation loop of their own.

Prompts are built by the same `ChatTemplate` the training data goes through and
left-padded to the longest prompt of the call; batches have a fixed size
(`data.fixed_batches`: the tail is padded and its outputs dropped), so generation
compiles once per (batch, prompt length, max_new_tokens). Images are never augmented.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from rlhfv_jax.data import factory
from rlhfv_jax.data.fixed_batches import fixed_size_batches
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


@dataclasses.dataclass(frozen=True)
class Samples:
  """What a `Sampler` call returns, one entry per (image, prompt).

  Attributes:
    texts: the answers, cut at EOS.
    finished: whether each answer ended with EOS (False: cut by `max_new_tokens`).
  """

  texts: list[str]
  finished: list[bool]


@dataclasses.dataclass
class Sampler:
  """Generates answers with one model config, chat template and image preprocessing.

  With `batch_sharding` (e.g. over this process's devices, `NamedSharding(mesh,
  P("data"))`), each batch is split over those devices and the jitted generation runs on
  all of them; the params must be placed on the same mesh.
  """

  model_config: ml_collections.ConfigDict
  template: ChatTemplate
  preprocessor: ImagePreprocessor
  batch_sharding: Optional[jax.sharding.NamedSharding] = None

  @classmethod
  def from_config(cls, config: Any) -> "Sampler":
    """The sampler of a run config (its model, tokenizer, template and images, the
    latter never augmented)."""
    facts = factory.ModelFacts.from_config(config)
    return cls(config.model, factory.make_template(config, facts),
               factory.make_preprocessor(config, facts, augment=False))

  def __call__(self, params: Any, images: Sequence[bytes], prompts: Sequence[str], *,
               max_new_tokens: int, batch_size: int, temperature: float = 0.0,
               top_p: float = 1.0, rng: Optional[jax.Array] = None,
               prompt_multiple: int = 1) -> Samples:
    """Generates one answer per (image, prompt).

    Args:
      params: model parameters.
      images: encoded images.
      prompts: one instruction per image (without the image placeholder).
      max_new_tokens: answer length limit in tokens.
      batch_size: rows per generate call.
      temperature: 0 for greedy decoding, else the sampling temperature.
      top_p: nucleus mass when sampling.
      rng: PRNG key, required when sampling; the batch starting at row s uses
        `fold_in(rng, s)`, so an answer does not depend on the batches before it.
      prompt_multiple: left-pad prompts to a multiple of this length, so calls with
        prompts of different lengths share compilations (padding does not change
        greedy answers).
    """
    if len(images) != len(prompts):
      raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if temperature > 0 and rng is None:
      raise ValueError("sampling (temperature > 0) needs an rng")
    if self.batch_sharding is not None and batch_size % self.batch_sharding.mesh.size:
      raise ValueError(f"batch_size={batch_size} must be a multiple of the "
                       f"{self.batch_sharding.mesh.size} devices the batch is split over")
    tok = self.template.tokenizer
    prompt_rows = [self.template.encode_prompt(p) for p in prompts]
    longest = max(len(r) for r in prompt_rows)  # one length for all: one compilation
    prompt_length = -(-longest // prompt_multiple) * prompt_multiple
    texts, finished = [], []
    for batch in fixed_size_batches(range(len(images)), batch_size):
      ids, mask = left_pad([prompt_rows[i] for i in batch.items], tok.pad_id, prompt_length)
      pixels = np.stack([self.preprocessor(images[i]) for i in batch.items])
      if self.batch_sharding is not None:
        ids, mask, pixels = jax.device_put((ids, mask, pixels), self.batch_sharding)
      out = generate_lib.generate(
          params, self.model_config, ids, mask, pixels, max_new_tokens=max_new_tokens,
          eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, temperature=temperature,
          top_p=top_p, rng=None if rng is None else jax.random.fold_in(rng, batch.start))
      for row in batch.real(np.asarray(out)):
        text, done = decode_response(self.template, row)
        texts.append(text)
        finished.append(done)
    return Samples(texts, finished)
