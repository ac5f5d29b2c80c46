"""The log-prob layer: logits only from `scored_from` on give exactly the full computation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhfv_jax import ddpo, logps
from rlhfv_jax import model as model_lib
from rlhfv_jax.batch import PreferenceBatch, SFTBatch, TokenSequences
from rlhfv_jax.data import packing
from rlhfv_jax.model import layers

T, F = True, False


def _sequences(cfg, rng, batch, prompt_lengths, answer_lengths, length):
  """Right-padded rows [BOS, image tokens, text | answer | pad] as the pipeline packs them."""
  n = model_lib.num_image_tokens(cfg)
  ids = rng.integers(3, cfg.image_token_id, size=(batch, length)).astype(np.int32)
  attention = np.zeros((batch, length), bool)
  loss = np.zeros((batch, length), bool)
  for b, (p, a) in enumerate(zip(prompt_lengths, answer_lengths)):
    ids[b, 0], ids[b, 1:1 + n] = cfg.bos_token_id, cfg.image_token_id
    attention[b, :p + a] = True
    loss[b, p - 1:p + a - 1] = True
  targets = np.concatenate([ids[:, 1:], np.zeros((batch, 1), np.int32)], axis=1)
  return TokenSequences(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(attention),
                        targets=jnp.asarray(targets), loss_mask=jnp.asarray(loss),
                        corrected_mask=jnp.asarray(loss & (rng.random(loss.shape) < 0.3)))


@pytest.fixture(scope="module")
def setup():
  cfg = model_lib.llava_config("tiny")
  params = model_lib.init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  n = model_lib.num_image_tokens(cfg)
  pixels = jnp.asarray(rng.normal(size=(3, cfg.vision.image_size, cfg.vision.image_size, 3)),
                       jnp.float32)
  batch = PreferenceBatch(
      pixel_values=pixels,
      chosen=_sequences(cfg, rng, 3, [n + 4, n + 9, n + 2], [7, 3, 12], n + 24),
      rejected=_sequences(cfg, rng, 3, [n + 4, n + 9, n + 2], [5, 10, 2], n + 24))
  return cfg, params, batch


def test_skipping_the_prompt_logits_gives_the_full_computation(setup):
  cfg, params, batch = setup
  full, skip = (model_lib.make_apply_fn(cfg, skip_prompt_logits=s) for s in (False, True))
  assert (logps.scored_from(full), logps.scored_from(skip)) == (0, model_lib.num_image_tokens(cfg))
  # The LM head really ran on fewer positions.
  logits = logps.sequence_logits(skip, params, batch.chosen, batch.pixel_values)
  assert logits.shape[1] == batch.chosen.targets.shape[1] - logps.scored_from(skip)
  start = logps.scored_from(skip)
  for got, want, tokens in zip(logps.answer_token_logps(skip, params, batch),
                               logps.answer_token_logps(full, params, batch),
                               (batch.chosen, batch.rejected)):
    np.testing.assert_allclose(np.asarray(got)[:, start:], np.asarray(want)[:, start:],
                               rtol=1e-6, atol=1e-6)
    assert not np.asarray(got)[:, :start].any()  # no logits there: 0, and never scored
    assert not np.asarray(tokens.loss_mask)[:, :start].any()
  # DDPO loss and its gradients (policy != reference, so they are not trivially 0).
  reference = jax.tree.map(lambda x: x * 1.01, params)
  grads = {}
  for name, fn in (("full", full), ("skip", skip)):
    loss_fn = jax.jit(jax.value_and_grad(ddpo.make_ddpo_loss(fn, ddpo.PAPER_HPARAMS),
                                         has_aux=True))
    grads[name] = loss_fn(params, reference, batch)
  (loss_full, _), g_full = grads["full"]
  (loss_skip, _), g_skip = grads["skip"]
  np.testing.assert_allclose(float(loss_skip), float(loss_full), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               g_skip, g_full)
  # SFT loss and token accuracy.
  sft = SFTBatch(pixel_values=batch.pixel_values, tokens=batch.chosen)
  (l_full, m_full), (l_skip, m_skip) = (
      jax.jit(ddpo.make_sft_loss(fn, reduce=False))(params, sft) for fn in (full, skip))
  np.testing.assert_allclose(np.asarray(l_skip), np.asarray(l_full), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(m_skip["token_accuracy"]),
                                np.asarray(m_full["token_accuracy"]))


def test_scoring_a_target_inside_the_skipped_prefix_is_never_silent(setup):
  cfg, params, batch = setup
  skip = model_lib.make_apply_fn(cfg)
  bad = batch.replace(chosen=batch.chosen.replace(
      loss_mask=batch.chosen.loss_mask.at[1, 2].set(True)))
  with pytest.raises(ValueError, match=r"rows \[1\] score targets before time index"):
    logps.answer_token_logps(skip, params, bad)
  chosen, rejected = jax.jit(lambda p, b: logps.answer_token_logps(skip, p, b))(params, bad)
  assert np.isnan(np.asarray(chosen[1])).all() and np.isfinite(np.asarray(chosen[0])).all()
  assert np.isfinite(np.asarray(rejected)).all()


def _examples(cfg, rng, lengths):
  """Tokenized pairs (prompt text, chosen, rejected lengths) behind BOS + image tokens."""
  n = model_lib.num_image_tokens(cfg)
  out = []
  for i, (p, c, r) in enumerate(lengths):
    prompt = np.concatenate([[cfg.bos_token_id], [cfg.image_token_id] * n,
                             rng.integers(3, 90, p)]).astype(np.int32)
    answer = lambda k: packing.Answer(rng.integers(3, 90, k).astype(np.int32),
                                       rng.random(k) < 0.3)
    out.append(packing.TokenizedExample(id=f"e{i}", index=i, epoch=0, image=b"",
                                         prompt_ids=prompt,
                                         answers={"chosen": answer(c), "rejected": answer(r)}))
  return out


def test_shared_prefix_gives_the_unshared_log_probs_loss_and_gradients():
  cfg = model_lib.llava_config("tiny", vocab_size=100)  # the HF-parity tiny model
  assert cfg.text.num_kv_heads < cfg.text.num_heads  # grouped-query attention is covered
  params = model_lib.init_params(cfg, jax.random.key(1))
  reference = jax.tree.map(lambda x: x * 1.02, params)
  rng = np.random.default_rng(1)
  # Prompts and answers of different lengths, so every row pads differently and the
  # rejected answer starts at a different slot in each row.
  examples = _examples(cfg, rng, [(4, 7, 5), (9, 3, 10), (2, 12, 2), (6, 1, 8)])
  pixels = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
  unshared = packing.assemble_batch(examples, pixels, 40, eos_id=2, pad_id=0)
  shared = packing.assemble_batch(examples, pixels, 56, eos_id=2, pad_id=0, shared_prefix=True)
  assert shared.chosen.input_ids.shape == (4, 56)  # 4 rows, not 8
  for skip in (True, False):
    both = jax.jit(functools.partial(logps.answer_token_logps,
                                     model_lib.make_apply_fn(cfg, skip_prompt_logits=skip)))
    for got, want, s, u in zip(both(params, shared), both(params, unshared),
                               (shared.chosen, shared.rejected),
                               (unshared.chosen, unshared.rejected)):
      for b in range(4):  # the scored tokens, in order, in both layouts
        np.testing.assert_allclose(np.asarray(got[b])[np.asarray(s.loss_mask[b])],
                                   np.asarray(want[b])[np.asarray(u.loss_mask[b])],
                                   rtol=1e-5, atol=2e-6)
  apply_fn = model_lib.make_apply_fn(cfg)
  release_loss = jax.jit(ddpo.make_ddpo_loss(apply_fn, ddpo.RLHFV_RELEASE_HPARAMS))
  np.testing.assert_allclose(float(release_loss(params, reference, shared)[0]),
                             float(release_loss(params, reference, unshared)[0]), rtol=1e-6)
  loss_and_grad = jax.jit(jax.value_and_grad(ddpo.make_ddpo_loss(apply_fn, ddpo.PAPER_HPARAMS),
                                             has_aux=True))
  (loss_s, metrics_s), grads_s = loss_and_grad(params, reference, shared)
  (loss_u, metrics_u), grads_u = loss_and_grad(params, reference, unshared)
  np.testing.assert_allclose(float(loss_s), float(loss_u), rtol=1e-6)
  for key in ("rewards/margin", "logps/policy_chosen", "logps/ref_rejected"):
    np.testing.assert_allclose(float(metrics_s[key]), float(metrics_u[key]), rtol=1e-5,
                               atol=1e-6)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_u))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale),
               grads_s, grads_u)


def test_shared_prefix_layout_positions_and_segments_by_hand():
  chosen = jnp.array([[1, 1, 1, 1, 1, 0, 0, 0, 0]], bool)
  rejected = jnp.array([[1, 1, 1, 0, 0, 1, 1, 1, 0]], bool)
  positions, segments = logps.shared_prefix_layout(chosen, rejected)
  np.testing.assert_array_equal(positions[:, :8], [[0, 1, 2, 3, 4, 3, 4, 5]])  # 8: padding
  p, c, r = logps.PROMPT_SEGMENT, logps.CHOSEN_SEGMENT, logps.REJECTED_SEGMENT
  np.testing.assert_array_equal(segments, [[p, p, p, c, c, r, r, r, 0]])
  # The model's mask: the rejected answer sees the prompt and itself, never chosen.
  mask = layers.causal_attention_mask(jnp.arange(9), chosen | rejected, segments,
                                                segments, shared_segment=p)[0, 0]
  np.testing.assert_array_equal(np.asarray(mask[6]), [T, T, T, F, F, T, T, F, F])
  np.testing.assert_array_equal(np.asarray(mask[4]), [T, T, T, T, T, F, F, F, F])
  np.testing.assert_array_equal(np.asarray(mask[2]), [T, T, T, F, F, F, F, F, F])


def test_chunked_log_probs_equal_a_numpy_log_softmax():
  """`chunked_targets_logps` against log-softmax in NumPy (float64), chunks that do not
  divide the token count (the last chunk is padded), two target arrays at once."""
  rng = np.random.default_rng(3)
  hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
  kernel = rng.normal(size=(4, 11)).astype(np.float32)
  targets = [rng.integers(0, 11, size=(3, 5)) for _ in range(2)]
  logits = hidden.astype(np.float64) @ kernel
  log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
      -1, keepdims=True)) - logits.max(-1, keepdims=True)
  for chunk in (1, 4, 7, 15, 64):
    lps, predicted = logps.chunked_targets_logps(
        lambda h: h @ jnp.asarray(kernel), jnp.asarray(hidden),
        *(jnp.asarray(t) for t in targets), chunk=chunk)
    for got, t in zip(lps, targets):
      np.testing.assert_allclose(got, np.take_along_axis(log_softmax, t[..., None], -1)[..., 0],
                                 rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(predicted, logits.argmax(-1))


def test_vocabulary_chunking_gives_the_unchunked_log_probs_metrics_and_gradients():
  """`model.logits_chunk` changes memory, not results: log-probs (shared and unshared
  rows), the DDPO loss and its gradients, SFT loss and accuracy equal the whole-batch LM
  head's."""
  cfg = model_lib.llava_config("tiny", vocab_size=100)
  chunked_cfg = model_lib.llava_config("tiny", vocab_size=100)
  chunked_cfg.logits_chunk = 13  # not a divisor of any row length here
  params = model_lib.init_params(cfg, jax.random.key(2))
  reference = jax.tree.map(lambda x: x * 1.02, params)
  rng = np.random.default_rng(2)
  examples = _examples(cfg, rng, [(4, 7, 5), (9, 3, 10), (2, 12, 2)])
  pixels = jnp.asarray(rng.normal(size=(3, 32, 32, 3)), jnp.float32)
  whole, chunked = model_lib.make_apply_fn(cfg), model_lib.make_apply_fn(chunked_cfg)
  assert (logps.logits_chunk(whole), logps.logits_chunk(chunked)) == (0, 13)
  unshared, shared = (packing.assemble_batch(examples, pixels, 56, eos_id=2, pad_id=0,
                                             shared_prefix=s) for s in (False, True))
  for batch in (unshared, shared):  # log-probs of both layouts
    for got, want in zip(*(jax.jit(functools.partial(logps.answer_token_logps, fn))(params, batch)
                           for fn in (chunked, whole))):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Loss and gradients through the chunks (the training layout).
  (loss_w, _), grads_w = jax.jit(jax.value_and_grad(
      ddpo.make_ddpo_loss(whole, ddpo.PAPER_HPARAMS), has_aux=True))(params, reference, shared)
  (loss_c, _), grads_c = jax.jit(jax.value_and_grad(
      ddpo.make_ddpo_loss(chunked, ddpo.PAPER_HPARAMS), has_aux=True))(params, reference, shared)
  np.testing.assert_allclose(float(loss_c), float(loss_w), rtol=1e-6)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_w))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale),
               grads_c, grads_w)
  sft_batch = SFTBatch(pixel_values=pixels, tokens=packing.assemble_batch(
      examples, pixels, 40, eos_id=2, pad_id=0).chosen)
  (loss_w, m_w), (loss_c, m_c) = (jax.jit(ddpo.make_sft_loss(fn))(params, sft_batch)
                                  for fn in (whole, chunked))
  np.testing.assert_allclose(float(loss_c), float(loss_w), rtol=1e-6)
  assert float(m_c["token_accuracy"]) == float(m_w["token_accuracy"])  # argmax per chunk
