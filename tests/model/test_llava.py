"""Flax LLaVA vs the HF PyTorch implementation, plus model-level invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhfv_jax import model as model_lib
from rlhfv_jax.model import hf_io

from . import hf_reference as ref

PARITY_SPECS = {
    "gqa_layer-2": ref.TinySpec(num_kv_heads=2, feature_layer=-2, rope_theta=10000.0),
    "mha_layer-1_theta500": ref.TinySpec(num_kv_heads=4, feature_layer=-1, rope_theta=500.0),
    "mqa_full_tied_theta1e6": ref.TinySpec(num_kv_heads=1, feature_layer=1, rope_theta=1e6,
                                          feature_select_strategy="full",
                                          tie_word_embeddings=True),
}


@pytest.mark.parametrize("name", sorted(PARITY_SPECS))
def test_logits_match_transformers(hf_checkpoint, name):
  torch_model, path = hf_checkpoint(PARITY_SPECS[name], seed=len(name))
  cfg, params = hf_io.load_hf_llava(path)
  n = model_lib.num_image_tokens(cfg)
  assert n == torch_model.config.image_seq_length
  # Right-padded batch with rows of different lengths (the pipeline's layout).
  ids, mask = ref.make_prompts(3, n + 12, n, lengths=[n + 12, n + 5, n + 9])
  pixels = ref.random_pixels(3)

  expected = ref.torch_logits(torch_model, ids, mask, pixels)
  logits = np.asarray(jax.jit(model_lib.make_apply_fn(cfg))(params, ids, mask, pixels))

  assert logits.dtype == np.float32 and logits.shape == expected.shape
  assert np.std(expected[mask]) > 0.3  # The reference is not degenerate.
  np.testing.assert_allclose(logits[mask], expected[mask], atol=2e-4, rtol=2e-4)


def test_encode_images_matches_transformers_image_features(hf_checkpoint):
  torch_model, path = hf_checkpoint(ref.TinySpec(feature_layer=-2))
  cfg, params = hf_io.load_hf_llava(path)
  pixels = ref.random_pixels(2, seed=3)
  with ref.torch.no_grad():
    expected = torch_model.get_image_features(
        ref.torch.from_numpy(pixels.transpose(0, 3, 1, 2))).pooler_output
  expected = np.stack([e.numpy() for e in expected])
  features = model_lib.Llava(cfg).apply({"params": params}, pixels,
                                        method=model_lib.Llava.encode_images)
  assert features.shape == (2, model_lib.num_image_tokens(cfg), cfg.text.hidden_size)
  np.testing.assert_allclose(np.asarray(features), expected, atol=1e-4, rtol=1e-4)


def _random_params(cfg, seed: int):
  """O(1)-scale random parameters from the shapes alone (no init compile needed)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (float(path[-1].key == "scale") + 0.1 * rng.normal(size=s.shape)
                       ).astype(np.float32),
      model_lib.param_shapes(cfg))


@pytest.fixture(scope="module")
def tiny():
  cfg = model_lib.llava_config("tiny", vocab_size=96)
  params = _random_params(cfg, seed=0)
  n = model_lib.num_image_tokens(cfg)
  ids, mask = ref.make_prompts(4, n + 10, n, lengths=[n + 10, n + 4, n + 7, n + 10], seed=1)
  ids = np.where(ids == ref.IMAGE_TOKEN_ID, cfg.image_token_id, ids % 90)
  return cfg, params, ids, mask


def test_sequences_per_image_equals_explicit_image_copies(tiny):
  cfg, params, ids, mask = tiny
  apply_fn = jax.jit(model_lib.make_apply_fn(cfg), static_argnums=4)
  pixels = ref.random_pixels(2, seed=5)
  shared = apply_fn(params, ids, mask, pixels, 2)
  # Tile order: row j uses image j % B.
  copies = apply_fn(params, ids, mask, pixels[np.array([0, 1, 0, 1])])
  np.testing.assert_allclose(np.asarray(shared), np.asarray(copies), atol=1e-5, rtol=1e-5)
  # And the two images really differ in effect (the tiling is not a no-op).
  assert not np.allclose(np.asarray(shared)[0], np.asarray(apply_fn(
      params, ids, mask, pixels[np.array([1, 0, 1, 0])]))[0], atol=1e-3)


def test_decode_reuses_encoded_images(tiny):
  cfg, params, ids, mask = tiny
  llava = model_lib.Llava(cfg)
  pixels = ref.random_pixels(4, seed=6)
  variables = {"params": params}

  @jax.jit
  def two_step_and_one_step(pixels):
    features = llava.apply(variables, pixels, method=model_lib.Llava.encode_images)
    two_step = llava.apply(variables, ids, mask, features, method=model_lib.Llava.decode)
    return two_step, llava.apply(variables, ids, mask, pixels)

  two_step, one_step = two_step_and_one_step(pixels)
  np.testing.assert_allclose(np.asarray(two_step), np.asarray(one_step), atol=1e-6, rtol=1e-6)


def test_remat_gives_same_logits_and_grads(tiny):
  cfg, params, ids, mask = tiny
  remat_cfg = cfg.copy_and_resolve_references()
  remat_cfg.remat = True
  pixels = ref.random_pixels(4, seed=7)

  def loss(apply_fn, p):
    logits = apply_fn(p, ids, mask, pixels)
    return jnp.sum(jnp.where(mask[..., None], jax.nn.log_softmax(logits), 0.0)) / mask.sum()

  plain = jax.jit(jax.value_and_grad(lambda p: loss(model_lib.make_apply_fn(cfg), p)))(params)
  remat = jax.jit(jax.value_and_grad(
      lambda p: loss(model_lib.make_apply_fn(remat_cfg), p)))(params)
  np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
  # Remat recomputes the forward pass, so only float reassociation differences remain.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4),
               plain[1], remat[1])
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(plain[1]["vision_tower"]))


def test_packed_segments_equal_separate_sequences(tiny):
  """segment_ids + positions make one packed row behave like its separate sequences."""
  cfg, params, ids, mask = tiny
  apply = jax.jit(model_lib.Llava(cfg).apply)
  text_only = np.where(ids == cfg.image_token_id, 7, ids)
  length = mask[0].sum()
  assert mask[3].sum() == length and mask[0].all()
  separate = np.asarray(apply({"params": params}, text_only[[0, 3]], mask[[0, 3]]))
  pad = 3
  packed = np.concatenate([text_only[0], text_only[3], np.zeros(pad, np.int32)])[None]
  valid = np.arange(packed.shape[1])[None] < 2 * length
  segments = np.concatenate([np.full(length, 1), np.full(length, 2), np.zeros(pad)])[None]
  positions = np.concatenate([np.arange(length), np.arange(length), np.zeros(pad)])[None]
  packed_logits = np.asarray(apply(
      {"params": params}, packed, valid, None, positions=positions.astype(np.int32),
      segment_ids=segments.astype(np.int32)))[0]
  np.testing.assert_allclose(packed_logits[:2 * length].reshape(separate.shape), separate,
                             atol=1e-5, rtol=1e-5)


def test_placeholder_count_mismatch(tiny):
  cfg, params, ids, mask = tiny
  apply_fn = model_lib.make_apply_fn(cfg)
  pixels = ref.random_pixels(4, seed=9)
  broken = ids.copy()
  broken[2, np.nonzero(ids[2] == cfg.image_token_id)[0][0]] = 5  # One placeholder short.
  with pytest.raises(ValueError, match=r"Rows \[2\] hold \[15\] image placeholder"):
    apply_fn(params, broken, mask, pixels)
  # Under jit the check cannot raise: the bad row turns NaN, the others are untouched.
  logits = np.asarray(jax.jit(apply_fn)(params, broken, mask, pixels))
  assert np.isnan(logits[2]).all()
  np.testing.assert_allclose(logits[[0, 1, 3]],
                             np.asarray(jax.jit(apply_fn)(params, ids, mask, pixels))[[0, 1, 3]],
                             atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_tracks_float32(tiny):
  cfg, params, ids, mask = tiny
  bf16_cfg = cfg.copy_and_resolve_references()
  bf16_cfg.dtype = "bfloat16"
  pixels = ref.random_pixels(4, seed=10)
  f32 = np.asarray(jax.jit(model_lib.make_apply_fn(cfg))(params, ids, mask, pixels))
  bf16 = jax.jit(model_lib.make_apply_fn(bf16_cfg))(params, ids, mask, pixels)
  assert bf16.dtype == jnp.float32  # Logits are always returned in float32.
  error = np.abs(np.asarray(bf16) - f32)[mask]
  assert 0 < error.mean() < 0.02 * f32[mask].std()
