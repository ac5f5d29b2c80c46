"""DDPO loss vs. an independent NumPy re-derivation of the paper's equations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhfv_jax import ddpo
from rlhfv_jax.batch import PreferenceBatch, TokenSequences

# ----------------------------------------------------------------------------------------
# NumPy references, written token by token from the paper's definitions (float64).


def np_log_softmax_pick(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
  logits = logits.astype(np.float64)
  out = np.zeros(targets.shape)
  for b in range(targets.shape[0]):
    for t in range(targets.shape[1]):
      row = logits[b, t]
      out[b, t] = row[targets[b, t]] - (row.max() + np.log(np.exp(row - row.max()).sum()))
  return out


def np_score(lp, loss_mask, corrected_mask, gamma, normalize):
  scores = []
  for b in range(lp.shape[0]):
    unchanged = [lp[b, t] for t in range(lp.shape[1]) if loss_mask[b, t] and not corrected_mask[b, t]]
    corrected = [lp[b, t] for t in range(lp.shape[1]) if loss_mask[b, t] and corrected_mask[b, t]]
    total = sum(unchanged) + gamma * sum(corrected)
    n = len(unchanged) + gamma * len(corrected)
    scores.append(total / n if normalize else total)
  return np.array(scores)


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_pref_loss(pc, pr, rc, rr, beta, loss_type, eps):
  h = (pc - rc) - (pr - rr)
  if loss_type == "sigmoid":
    return -(1 - eps) * np_log_sigmoid(beta * h) - eps * np_log_sigmoid(-beta * h)
  if loss_type == "robust":
    return ((1 - eps) * -np_log_sigmoid(beta * h) - eps * -np_log_sigmoid(-beta * h)) / (1 - 2 * eps)
  if loss_type == "ipo":
    return (h - 1.0 / (2 * beta)) ** 2
  if loss_type == "hinge":
    return np.maximum(0.0, 1.0 - beta * h)
  raise AssertionError(loss_type)


def random_masks(rng, batch, length, pad_from):
  """Response masks with right padding: positions >= pad_from[b] are padding."""
  loss_mask = np.zeros((batch, length), bool)
  for b in range(batch):
    start = rng.integers(0, 3)
    loss_mask[b, start:pad_from[b]] = True
  corrected = loss_mask & (rng.random((batch, length)) < 0.35)
  return loss_mask, corrected


# ----------------------------------------------------------------------------------------
# token_logps / sequence_logps / preference_loss


def test_token_logps_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 4
  targets = rng.integers(0, 11, size=(3, 5))
  got = ddpo.token_logps(jnp.asarray(logits), jnp.asarray(targets))
  assert got.dtype == jnp.float32 and got.shape == (3, 5)
  np.testing.assert_allclose(got, np_log_softmax_pick(logits, targets), rtol=1e-5, atol=1e-5)


def test_token_logps_bf16_is_stable():
  rng = np.random.default_rng(1)
  # Large-magnitude logits: a naive exp in bf16 would overflow / lose the normaliser.
  logits = jnp.asarray(rng.normal(size=(2, 4, 32000)) * 30 + 200, dtype=jnp.bfloat16)
  targets = rng.integers(0, 32000, size=(2, 4))
  got = ddpo.token_logps(logits, jnp.asarray(targets))
  ref = np_log_softmax_pick(np.asarray(logits.astype(jnp.float32)), targets)
  assert got.dtype == jnp.float32
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("gamma", [1.0, 1.1, 5.0])
def test_sequence_logps_matches_numpy(normalize, gamma):
  rng = np.random.default_rng(2)
  lp = -rng.random((4, 9)) * 5
  loss_mask, corrected = random_masks(rng, 4, 9, pad_from=[9, 7, 5, 8])
  lp[~loss_mask] = rng.normal(size=(~loss_mask).sum()) * 100  # padding must not leak in
  got = ddpo.sequence_logps(jnp.asarray(lp, jnp.float32), jnp.asarray(loss_mask),
                            jnp.asarray(corrected), gamma, normalize)
  np.testing.assert_allclose(got, np_score(lp, loss_mask, corrected, gamma, normalize),
                             rtol=1e-5, atol=1e-4)


def test_gamma_one_is_length_normalised_dpo():
  rng = np.random.default_rng(3)
  lp = -rng.random((3, 6))
  loss_mask, corrected = random_masks(rng, 3, 6, pad_from=[6, 4, 5])
  got = ddpo.sequence_logps(jnp.asarray(lp, jnp.float32), jnp.asarray(loss_mask),
                            jnp.asarray(corrected), 1.0, True)
  mean_lp = np.array([lp[b][loss_mask[b]].mean() for b in range(3)])
  np.testing.assert_allclose(got, mean_lp, rtol=1e-6)


def test_hand_computed_case():
  # y = [u, c, c, u, pad]; lp = [-1, -2, -3, -4, junk]; gamma = 5.
  lp = jnp.array([[-1.0, -2.0, -3.0, -4.0, 99.0]])
  loss_mask = jnp.array([[1, 1, 1, 1, 0]], bool)
  corrected = jnp.array([[0, 1, 1, 0, 0]], bool)
  weighted_sum = (-1 - 4) + 5 * (-2 - 3)  # = -30
  np.testing.assert_allclose(ddpo.sequence_logps(lp, loss_mask, corrected, 5.0, False), [-30.0])
  np.testing.assert_allclose(ddpo.sequence_logps(lp, loss_mask, corrected, 5.0, True),
                             [weighted_sum / (2 + 5 * 2)])


def test_corrected_outside_loss_mask_is_ignored():
  lp = jnp.array([[-1.0, -2.0, -7.0]])
  loss_mask = jnp.array([[1, 1, 0]], bool)
  corrected = jnp.array([[0, 1, 1]], bool)  # the last one is padding: not a response token
  np.testing.assert_allclose(ddpo.sequence_logps(lp, loss_mask, corrected, 3.0, True),
                             [(-1 + 3 * -2) / 4])


def test_empty_response_is_an_error_not_nan():
  lp = jnp.zeros((2, 3))
  loss_mask = jnp.array([[1, 1, 0], [0, 0, 0]], bool)
  with pytest.raises(ValueError, match=r"batch index \[1\].*empty response"):
    ddpo.sequence_logps(lp, loss_mask, loss_mask, 5.0)
  jitted = jax.jit(lambda lp, m: ddpo.sequence_logps(lp, m, m, 5.0))
  with pytest.raises(Exception, match="empty response"):
    jax.block_until_ready(jitted(lp, loss_mask))
  # Unchecked inside jit, the empty row is NaN (caught by the train step's non-finite
  # guard) in both normalizations, never a plausible-looking 0.
  for normalize in (True, False):
    unchecked = jax.jit(lambda lp, m: ddpo.sequence_logps(lp, m, m, 5.0, normalize,
                                                          check_nonempty=False))
    scores = unchecked(lp, loss_mask)
    assert np.isfinite(scores[0]) and np.isnan(scores[1])


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.2),
                                           ("ipo", 0.0), ("hinge", 0.0)])
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_preference_loss_matches_numpy(loss_type, eps, beta):
  rng = np.random.default_rng(4)
  pc, pr, rc, rr = (rng.normal(size=7) * 2 for _ in range(4))
  loss, metrics = ddpo.preference_loss(*(jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)),
                                       beta=beta, loss_type=loss_type, label_smoothing=eps)
  np.testing.assert_allclose(loss, np_pref_loss(pc, pr, rc, rr, beta, loss_type, eps),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(metrics["rewards/chosen"], beta * (pc - rc), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["rewards/rejected"], beta * (pr - rr), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["rewards/margin"], beta * ((pc - rc) - (pr - rr)),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(metrics["rewards/accuracy"], ((pc - rc) > (pr - rr)).astype(float))


def test_beta_scales_the_implicit_reward():
  # For DPO, loss(β, h) = loss(1, βh): β only rescales the log-ratio margin.
  h = jnp.array([0.3, -1.2, 2.5])
  zero = jnp.zeros(3)
  for beta in (0.1, 0.5, 3.0):
    scaled, _ = ddpo.preference_loss(h, zero, zero, zero, beta=beta)
    unit, _ = ddpo.preference_loss(beta * h, zero, zero, zero, beta=1.0)
    np.testing.assert_allclose(scaled, unit, rtol=1e-6)
  # At h = 0 the DPO loss is log 2 for every β.
  at_zero, _ = ddpo.preference_loss(zero, zero, zero, zero, beta=0.5)
  np.testing.assert_allclose(at_zero, np.log(2.0), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss_type="kto"), "loss_type"),
    (dict(label_smoothing=0.5), "label_smoothing"),
    (dict(loss_type="ipo", label_smoothing=0.1), "only defined"),
    (dict(beta=0.0), "beta"),
])
def test_preference_loss_rejects_bad_arguments(kwargs, match):
  args = dict(beta=0.5) | kwargs
  with pytest.raises(ValueError, match=match):
    ddpo.preference_loss(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), **args)


# ----------------------------------------------------------------------------------------
# make_ddpo_loss on a toy image-conditioned language model.

VOCAB, LENGTH, IMAGE = 13, 8, (4, 4, 3)


def toy_params(seed):
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {
      "embed": jax.random.normal(k[0], (VOCAB, 6)),
      "out": jax.random.normal(k[1], (6, VOCAB)),
      "image": jax.random.normal(k[2], (int(np.prod(IMAGE)), VOCAB)) * 0.3,
  }


def toy_apply(params, input_ids, attention_mask, pixel_values, sequences_per_image=1):
  """Logits depend on the token, its left neighbour and the sequence's own image."""
  del attention_mask
  image_bias = pixel_values.reshape(pixel_values.shape[0], -1) @ params["image"]  # [B, V]
  image_bias = jnp.concatenate([image_bias] * sequences_per_image, axis=0)
  assert image_bias.shape[0] == input_ids.shape[0]
  h = params["embed"][input_ids]
  h = jnp.tanh(h + jnp.roll(h, 1, axis=1))
  return h @ params["out"] + image_bias[:, None, :]


def random_sequences(rng, batch):
  input_ids = rng.integers(1, VOCAB, size=(batch, LENGTH))
  targets = np.concatenate([input_ids[:, 1:], np.zeros((batch, 1), int)], axis=1)
  lengths = rng.integers(4, LENGTH, size=batch)
  attention = np.arange(LENGTH)[None] < lengths[:, None]
  loss_mask = attention & (np.arange(LENGTH)[None] >= 2) & (np.arange(LENGTH)[None] < lengths[:, None] - 1)
  corrected = loss_mask & (rng.random((batch, LENGTH)) < 0.4)
  return TokenSequences(input_ids=jnp.asarray(input_ids, jnp.int32),
                        attention_mask=jnp.asarray(attention), targets=jnp.asarray(targets, jnp.int32),
                        loss_mask=jnp.asarray(loss_mask), corrected_mask=jnp.asarray(corrected))


def random_batch(seed, batch=8):
  rng = np.random.default_rng(seed)
  return PreferenceBatch(pixel_values=jnp.asarray(rng.normal(size=(batch, *IMAGE)), jnp.float32),
                         chosen=random_sequences(rng, batch), rejected=random_sequences(rng, batch))


def np_ddpo_reference(policy, ref, batch, gamma, beta, normalize):
  """Each sequence scored separately with its own image, then the paper's loss."""
  def scores(params, seqs):
    logits = np.asarray(toy_apply(params, seqs.input_ids, seqs.attention_mask, batch.pixel_values))
    lp = np_log_softmax_pick(logits, np.asarray(seqs.targets))
    return np_score(lp, np.asarray(seqs.loss_mask), np.asarray(seqs.corrected_mask), gamma, normalize)
  pc, pr = scores(policy, batch.chosen), scores(policy, batch.rejected)
  rc, rr = scores(ref, batch.chosen), scores(ref, batch.rejected)
  return np_pref_loss(pc, pr, rc, rr, beta, "sigmoid", 0.0).mean()


@pytest.mark.parametrize("hparams", [ddpo.PAPER_HPARAMS, ddpo.RLHFV_RELEASE_HPARAMS])
def test_ddpo_loss_matches_numpy(hparams):
  policy, ref, batch = toy_params(0), toy_params(1), random_batch(5)
  loss_fn = ddpo.make_ddpo_loss(toy_apply, hparams)
  loss, metrics = jax.jit(loss_fn)(policy, ref, batch)
  expected = np_ddpo_reference(policy, ref, batch, hparams.gamma, hparams.beta,
                               hparams.normalize)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert metrics["loss"] == loss
  assert 0.0 <= metrics["rewards/accuracy"] <= 1.0


def test_defaults_are_the_papers():
  policy, ref, batch = toy_params(0), toy_params(1), random_batch(6)
  loss_default, _ = ddpo.make_ddpo_loss(toy_apply, {})(policy, ref, batch)
  np.testing.assert_allclose(loss_default, np_ddpo_reference(policy, ref, batch, 5.0, 0.5, True),
                             rtol=1e-5)


def test_policy_equal_to_reference_gives_log_two():
  params, batch = toy_params(0), random_batch(7)
  loss, metrics = ddpo.make_ddpo_loss(toy_apply, ddpo.PAPER_HPARAMS)(params, params, batch)
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/margin"], 0.0, atol=1e-7)


def test_cached_reference_logps_match_reference_forward():
  policy, ref, batch = toy_params(0), toy_params(1), random_batch(8)
  loss_fn = ddpo.make_ddpo_loss(toy_apply, ddpo.PAPER_HPARAMS)

  def cached(seqs):
    logits = toy_apply(ref, seqs.input_ids, seqs.attention_mask, batch.pixel_values)
    return seqs.replace(ref_token_logps=ddpo.token_logps(logits, seqs.targets))

  cached_batch = batch.replace(chosen=cached(batch.chosen), rejected=cached(batch.rejected))
  with_forward, _ = loss_fn(policy, ref, batch)
  with_cache, _ = jax.jit(loss_fn)(policy, None, cached_batch)
  np.testing.assert_allclose(with_cache, with_forward, rtol=1e-6)
  with pytest.raises(ValueError, match="ref_params is None"):
    loss_fn(policy, None, batch)
  one_sided = batch.replace(chosen=cached(batch.chosen))
  with pytest.raises(ValueError, match="both answers or for neither; got them only for the chosen"):
    loss_fn(policy, ref, one_sided)


def test_reference_gets_no_gradient():
  policy, ref, batch = toy_params(0), toy_params(1), random_batch(9)
  loss_fn = ddpo.make_ddpo_loss(toy_apply, ddpo.PAPER_HPARAMS)
  ref_grads = jax.grad(lambda r: loss_fn(policy, r, batch)[0])(ref)
  for leaf in jax.tree.leaves(ref_grads):
    np.testing.assert_array_equal(leaf, 0.0)


def test_gradients_match_finite_differences():
  with jax.enable_x64(True):
    policy = jax.tree.map(lambda x: x.astype(jnp.float64), toy_params(0))
    ref = jax.tree.map(lambda x: x.astype(jnp.float64), toy_params(1))
    batch = random_batch(10, batch=2)
    batch = batch.replace(pixel_values=batch.pixel_values.astype(jnp.float64))
    loss_fn = ddpo.make_ddpo_loss(toy_apply, ddpo.PAPER_HPARAMS)
    f = jax.jit(lambda p: loss_fn(p, ref, batch)[0])
    grads = jax.grad(f)(policy)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    rng = np.random.default_rng(0)
    for _ in range(3):
      direction = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), policy)
      eps = 1e-6
      plus = f(jax.tree.map(lambda p, d: p + eps * d, policy, direction))
      minus = f(jax.tree.map(lambda p, d: p - eps * d, policy, direction))
      numeric = (plus - minus) / (2 * eps)
      analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
      np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_pmap_over_four_devices_matches_one_device():
  assert jax.local_device_count() >= 4, "tests/conftest.py forces 4 CPU devices"
  ndev = 4
  policy, ref, batch = toy_params(0), toy_params(1), random_batch(11, batch=8)
  loss_fn = ddpo.make_ddpo_loss(toy_apply, ddpo.PAPER_HPARAMS)
  value_and_grad = jax.value_and_grad(lambda p, r, b: loss_fn(p, r, b)[0])
  loss_1, grads_1 = jax.jit(value_and_grad)(policy, ref, batch)

  def step(p, r, b):
    loss, grads = value_and_grad(p, r, b)
    return jax.lax.pmean(loss, "devices"), jax.lax.pmean(grads, "devices")

  replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * ndev), tree)
  shard = lambda tree: jax.tree.map(lambda x: x.reshape(ndev, -1, *x.shape[1:]), tree)
  loss_n, grads_n = jax.pmap(step, axis_name="devices", devices=jax.local_devices()[:ndev])(
      replicate(policy), replicate(ref), shard(batch))
  np.testing.assert_allclose(loss_n, np.full(ndev, loss_1), rtol=1e-5)
  for g1, gn in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_n)):
    for d in range(ndev):
      np.testing.assert_allclose(gn[d], g1, rtol=1e-4, atol=1e-6)


def test_sft_loss_is_answer_token_nll():
  params, batch = toy_params(2), random_batch(12)
  from rlhfv_jax.batch import SFTBatch
  sft = SFTBatch(pixel_values=batch.pixel_values, tokens=batch.chosen)
  loss, metrics = jax.jit(ddpo.make_sft_loss(toy_apply))(params, sft)
  seqs = batch.chosen
  logits = np.asarray(toy_apply(params, seqs.input_ids, seqs.attention_mask, batch.pixel_values))
  lp = np_log_softmax_pick(logits, np.asarray(seqs.targets))
  mask = np.asarray(seqs.loss_mask)
  np.testing.assert_allclose(loss, -lp[mask].mean(), rtol=1e-5)
  assert metrics["num_tokens"] == mask.sum()
