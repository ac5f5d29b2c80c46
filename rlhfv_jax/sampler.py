"""Text in, text out: the one sampler every generating caller uses.

(image, instruction) pairs → chat template → left-padded prompt ids + preprocessed
pixels → the project's KV-cache `model.generate.generate` → decoded answers. The demo
(feedback sampling and evaluation), evaluation stages and the sampling stage all call
`Sampler`, never a generation loop of their own.

Prompts are built by the same `ChatTemplate` the training data goes through and
left-padded to the longest prompt of the call; batches have a fixed size
(`data.fixed_batches`: the tail is padded and its outputs dropped), so generation
compiles once per (batch, prompt length, max_new_tokens). Images are never augmented.

`Sampler.choice_probabilities` scores instead of generating: the probability that the
first answer token is one of given ids (an AI labeler's P(yes) / P(no)), from the same
inputs and the same prefill forward (`model.generate.next_token_logits`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlhfv_jax.data import factory
from rlhfv_jax.data.fixed_batches import FixedSizeBatch, fixed_size_batches
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
    if temperature > 0 and rng is None:
      raise ValueError("sampling (temperature > 0) needs an rng")
    tok = self.template.tokenizer
    texts, finished = [], []
    for batch, ids, mask, pixels in self._prompt_batches(images, prompts, batch_size,
                                                         prompt_multiple):
      out = generate_lib.generate(
          params, self.model_config, ids, mask, pixels, max_new_tokens=max_new_tokens,
          eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, temperature=temperature,
          top_p=top_p, rng=None if rng is None else jax.random.fold_in(rng, batch.start))
      for row in batch.real(np.asarray(out)):
        text, done = decode_response(self.template, row)
        texts.append(text)
        finished.append(done)
    return Samples(texts, finished)

  def choice_probabilities(self, params: Any, images: Sequence[bytes], prompts: Sequence[str],
                           *, choices: Mapping[str, Sequence[int]], batch_size: int,
                           prompt_multiple: int = 1) -> dict[str, np.ndarray]:
    """The probability of each choice as the first answer token, per (image, prompt).

    The next-token distribution after the prompt as generation sees it (same template,
    padding, images, batching and forward as `__call__`): a softmax over the whole
    vocabulary in float32, summed over each choice's token ids — e.g. P(yes) with
    ``choices={"yes": ids of "▁yes", "▁Yes", ...}`` (`tokenizer.choice_token_ids`).

    Args:
      params: model parameters.
      images: encoded images.
      prompts: one instruction per image (without the image placeholder).
      choices: name -> token ids; the ids of different choices may overlap.
      batch_size: rows per forward.
      prompt_multiple: left-pad prompts to a multiple of this length (see `__call__`).

    Returns:
      name -> float32 [len(prompts)] probabilities.
    """
    vocab_size = self.model_config.text.vocab_size
    for name, ids in choices.items():
      if not ids or any(not 0 <= int(i) < vocab_size for i in ids):
        raise ValueError(f"choice {name!r}: token ids {list(ids)} must be a non-empty list of "
                         f"ids in [0, {vocab_size})")
    # One gather of every choice's ids on device; the per-choice sums happen here.
    token_ids = np.array([int(i) for ids in choices.values() for i in ids], np.int32)
    ends = np.cumsum([len(ids) for ids in choices.values()])
    rows = []
    for batch, ids, mask, pixels in self._prompt_batches(images, prompts, batch_size,
                                                         prompt_multiple):
      logits = generate_lib.next_token_logits(params, self.model_config, ids, mask, pixels)
      rows.extend(batch.real(np.asarray(_token_probabilities(logits, token_ids))))
    probs = np.asarray(rows, np.float32).reshape(len(rows), len(token_ids))
    return {name: part.sum(axis=1, dtype=np.float32)
            for name, part in zip(choices, np.split(probs, ends[:-1], axis=1))}

  def _prompt_batches(self, images: Sequence[bytes], prompts: Sequence[str], batch_size: int,
                      prompt_multiple: int
                      ) -> Iterator[tuple[FixedSizeBatch, Any, Any, Any]]:
    """Model inputs of every forward over (image, prompt) rows, in order.

    Prompts are encoded for generation, left-padded to one length (the longest, rounded
    up to `prompt_multiple`: one compilation), images preprocessed; with
    `batch_sharding` the arrays are split over its devices. The last batch is padded
    (`fixed_size_batches`): keep `batch.real(...)` of each output.

    Yields:
      (batch, ids [batch_size, P] int32, mask [batch_size, P] bool, pixels).
    """
    if len(images) != len(prompts):
      raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if self.batch_sharding is not None and batch_size % self.batch_sharding.mesh.size:
      raise ValueError(f"batch_size={batch_size} must be a multiple of the "
                       f"{self.batch_sharding.mesh.size} devices the batch is split over")
    if not prompts:
      return
    tok = self.template.tokenizer
    prompt_rows = [self.template.encode_prompt(p) for p in prompts]
    longest = max(len(r) for r in prompt_rows)  # one length for all: one compilation
    prompt_length = -(-longest // prompt_multiple) * prompt_multiple
    for batch in fixed_size_batches(range(len(images)), batch_size):
      ids, mask = left_pad([prompt_rows[i] for i in batch.items], tok.pad_id, prompt_length)
      pixels = np.stack([self.preprocessor(images[i]) for i in batch.items])
      if self.batch_sharding is not None:
        ids, mask, pixels = jax.device_put((ids, mask, pixels), self.batch_sharding)
      yield batch, ids, mask, pixels


@jax.jit
def _token_probabilities(logits: jax.Array, token_ids: jax.Array) -> jax.Array:
  """softmax(logits [N, V]) at `token_ids` [K]: [N, K] float32."""
  return jnp.take(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), token_ids, axis=-1)
