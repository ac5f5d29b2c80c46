"""KV-cache generation vs transformers' greedy `generate`, sampling and shape behaviour."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhfv_jax import model as model_lib
from rlhfv_jax.model import generate as generate_lib
from rlhfv_jax.model import hf_io

from . import hf_reference as ref

torch = ref.torch
MAX_NEW = 10


def _hf_greedy(model, ids, mask, pixels, eos_token_id):
  """transformers' greedy generate, new tokens padded to MAX_NEW with PAD_TOKEN_ID."""
  with torch.no_grad():
    out = model.generate(
        input_ids=torch.from_numpy(ids.astype(np.int64)),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)),
        max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos_token_id,
        pad_token_id=ref.PAD_TOKEN_ID)
  new = out[:, ids.shape[1]:].numpy()
  return np.pad(new, ((0, 0), (0, MAX_NEW - new.shape[1])), constant_values=ref.PAD_TOKEN_ID)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  torch_model = ref.build_hf_llava(ref.TinySpec(num_kv_heads=2, rope_theta=1000.0), seed=11)
  path = tmp_path_factory.mktemp("gen")
  torch_model.save_pretrained(path)
  cfg, params = hf_io.load_hf_llava(path)
  n = model_lib.num_image_tokens(cfg)
  left = ref.make_prompts(3, n + 8, n, lengths=[n + 8, n + 3, n + 6], left_pad=True, seed=4)
  right = ref.make_prompts(3, n + 8, n, lengths=[n + 8, n + 3, n + 6], left_pad=False, seed=4)
  return torch_model, cfg, params, left, right, ref.random_pixels(3, seed=2)


def _generate(cfg, params, prompts, pixels, eos, **kwargs):
  return np.asarray(generate_lib.generate(
      params, cfg, *prompts, pixels, max_new_tokens=MAX_NEW, eos_token_id=eos,
      pad_token_id=ref.PAD_TOKEN_ID, **kwargs))


def test_greedy_matches_transformers_and_stops_at_eos(reference):
  torch_model, cfg, params, left, right, pixels = reference
  never = ref.IMAGE_TOKEN_ID  # Greedy never picks the placeholder here (checked below).
  tokens = _generate(cfg, params, left, pixels, (never, never))
  np.testing.assert_array_equal(tokens, _hf_greedy(torch_model, *left, pixels, never))
  assert tokens.shape == (3, MAX_NEW) and not (tokens == never).any()
  assert len(np.unique(tokens)) > 3  # Not a degenerate repetition.

  # Stop row 0 mid-way: its 4th token (first occurrence) becomes EOS (any of several ids).
  eos = next(int(t) for i, t in enumerate(tokens[0]) if i >= 3 and t not in tokens[0, :i])
  stop = list(tokens[0]).index(eos)
  stopped = _generate(cfg, params, left, pixels, (never, eos))
  np.testing.assert_array_equal(stopped, _hf_greedy(torch_model, *left, pixels, eos))
  np.testing.assert_array_equal(stopped[0, :stop + 1], tokens[0, :stop + 1])
  assert (stopped[0, stop + 1:] == ref.PAD_TOKEN_ID).all()


def test_right_padding_equals_left_padding(reference):
  _, cfg, params, left, right, pixels = reference
  np.testing.assert_array_equal(_generate(cfg, params, right, pixels, 2),
                                _generate(cfg, params, left, pixels, 2))


def test_sequences_per_image_and_sampling_controls(reference):
  _, cfg, params, left, _, pixels = reference
  ids, mask = left
  shared = _generate(cfg, params, (np.concatenate([ids] * 2), np.concatenate([mask] * 2)),
                     pixels, 2, sequences_per_image=2)
  greedy = _generate(cfg, params, left, pixels, 2)
  np.testing.assert_array_equal(shared, np.concatenate([greedy] * 2))

  key = jax.random.key(7)
  hot = _generate(cfg, params, left, pixels, 2, temperature=5.0, rng=key)
  np.testing.assert_array_equal(hot, _generate(cfg, params, left, pixels, 2, temperature=5.0,
                                               rng=key))
  assert (hot != greedy).any()
  # A vanishing nucleus keeps only the top token: sampling collapses to greedy.
  np.testing.assert_array_equal(
      _generate(cfg, params, left, pixels, 2, temperature=5.0, top_p=1e-6, rng=key), greedy)
  with pytest.raises(ValueError, match="rng"):
    _generate(cfg, params, left, pixels, 2, temperature=1.0)


def test_compiles_once_per_shape(reference):
  _, cfg, params, left, _, pixels = reference
  fn = generate_lib._cached_generate_fn(ml_collections.FrozenConfigDict(cfg), MAX_NEW, 1)
  sizes = []
  for temperature, seed in ((0.0, 0), (0.7, 1), (1.3, 2)):
    _generate(cfg, params, left, ref.random_pixels(3, seed), seed + 3, temperature=temperature,
              top_p=0.9 - 0.1 * seed, rng=jax.random.key(seed))
    sizes.append(fn._cache_size())
  assert sizes[0] >= 1 and sizes[1] == sizes[2] == sizes[0]


def test_sample_tokens_follows_the_nucleus_distribution():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  logits = jnp.tile(logits, (20000, 1))
  draw = jax.jit(generate_lib.sample_tokens)
  full = np.bincount(np.asarray(draw(logits, jax.random.key(0), 1.0, 1.0)), minlength=4)
  np.testing.assert_allclose(full / full.sum(), [0.5, 0.3, 0.15, 0.05], atol=0.015)
  # top_p = 0.7: the nucleus is {0, 1} (0.5 < 0.7 <= 0.8), renormalized to 5/8, 3/8.
  nucleus = np.bincount(np.asarray(draw(logits, jax.random.key(1), 1.0, 0.7)), minlength=4)
  np.testing.assert_allclose(nucleus / nucleus.sum(), [0.625, 0.375, 0, 0], atol=0.015)
  # Temperature 0.5 squares the probabilities before renormalizing.
  cold = np.bincount(np.asarray(draw(logits, jax.random.key(2), 0.5, 1.0)), minlength=4)
  expected = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
  np.testing.assert_allclose(cold / cold.sum(), expected / expected.sum(), atol=0.015)
  greedy = draw(logits[:3], jax.random.key(3), 0.0, 1.0)
  np.testing.assert_array_equal(np.asarray(greedy), [0, 0, 0])


def test_cached_decoding_gives_the_full_forward_logits(reference):
  """Prompt into an empty cache, then the rest one token at a time (the in-place cache
  and its head-major attention) reproduces the uncached forward's logits everywhere."""
  _, cfg, params, _, _, pixels = reference
  n = model_lib.num_image_tokens(cfg)
  # Left-padded rows whose last 3 tokens are text (decoded one at a time below).
  ids, mask = ref.make_prompts(3, n + 8, n, lengths=[n + 8, n + 6, n + 7], left_pad=True, seed=5)
  model = model_lib.Llava(cfg)
  variables = {"params": params}
  full = model.apply(variables, ids, mask, pixels)
  prompt_len, num_rows = ids.shape[1] - 3, ids.shape[0]
  features = model.apply(variables, pixels, method=model_lib.Llava.encode_images)
  positions = np.cumsum(mask, axis=1) - 1
  cache = model_lib.family_of(cfg).init_kv_cache(cfg, num_rows, ids.shape[1] + 2)
  key_valid = np.concatenate([mask, np.ones((num_rows, 2), bool)], axis=1)
  logits, cache = model.apply(
      variables, ids[:, :prompt_len], key_valid, features, positions=positions[:, :prompt_len],
      kv_cache=cache, cache_index=0, method=model_lib.Llava.decode)
  steps = [logits]
  for slot in range(prompt_len, ids.shape[1]):
    logits, cache = model.apply(
        variables, ids[:, slot:slot + 1], key_valid, None,
        positions=positions[:, slot:slot + 1], kv_cache=cache, cache_index=jnp.int32(slot),
        method=model_lib.Llava.decode)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1)[mask], np.asarray(full)[mask],
                             rtol=2e-5, atol=2e-5)


def test_first_argmax_is_argmax_with_ties_and_nan():
  logits = jnp.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, jnp.nan, 5.0, jnp.nan],
                      [-jnp.inf, -1.0, -jnp.inf, -1.0]])
  np.testing.assert_array_equal(np.asarray(generate_lib.first_argmax(logits)), [1, 0, 1, 1])
  random = jax.random.normal(jax.random.key(0), (64, 1000))
  np.testing.assert_array_equal(np.asarray(generate_lib.first_argmax(random)),
                                np.asarray(jnp.argmax(random, axis=-1)))
