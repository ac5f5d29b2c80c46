"""LoRA as a model feature: fresh adapters change nothing, the low-rank path is
x W + (alpha / r) (x A) B (a NumPy re-derivation), folding gives the same logits, only
the adapters get gradients, bad settings are named."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhfv_jax import ddpo
from rlhfv_jax import model as model_lib
from rlhfv_jax.model import lora
from rlhfv_jax.train import objectives


def _cfg(**lora_settings):
  cfg = model_lib.llava_config("tiny", vocab_size=300)
  cfg.lora.update(dict(dict(rank=4, alpha=8.0), **lora_settings))
  return cfg


def _inputs(cfg, rows=2, length=40, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, 250, (rows, length))
  ids[:, 1:1 + model_lib.num_image_tokens(cfg)] = cfg.image_token_id
  pixels = rng.normal(size=(rows, cfg.vision.image_size, cfg.vision.image_size, 3))
  return jnp.asarray(ids, jnp.int32), jnp.ones((rows, length), bool), jnp.asarray(pixels,
                                                                                  jnp.float32)


@pytest.fixture(scope="module")
def tiny():
  cfg = _cfg()
  base = model_lib.init_params(lora.base_config(cfg), jax.random.PRNGKey(0))
  adapters = lora.init_adapters(base, cfg.lora, jax.random.PRNGKey(1))
  trained = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(2), x.shape),
                         adapters)
  return cfg, base, adapters, trained


def test_the_tree_of_a_lora_model_is_base_plus_adapters(tiny):
  cfg, base, adapters, _ = tiny
  assert jax.tree.structure(lora.merge(base, adapters)) == jax.tree.structure(
      model_lib.param_shapes(cfg))
  q = adapters["language_model"]["layers"]["self_attn"]["q_proj"]
  layers, hidden = cfg.text.num_layers, cfg.text.hidden_size
  assert q["lora_a"].shape == (layers, hidden, 4) and q["lora_b"].shape == (layers, 4, hidden)
  assert not np.any(q["lora_b"])  # B starts at zero
  bound = 1 / np.sqrt(hidden)  # PEFT's Kaiming-uniform A
  assert np.all(np.abs(q["lora_a"]) <= bound) and np.std(q["lora_a"]) > bound / 4
  assert "vision_tower" not in adapters  # the decoder only
  back, split_adapters = lora.split(lora.merge(base, adapters))
  assert jax.tree.structure(back) == jax.tree.structure(base)
  assert jax.tree.structure(split_adapters) == jax.tree.structure(adapters)


def test_fresh_adapters_give_the_base_model_exactly(tiny):
  cfg, base, adapters, _ = tiny
  apply = model_lib.make_apply_fn(cfg)
  inputs = _inputs(cfg)
  np.testing.assert_array_equal(apply(lora.merge(base, adapters), *inputs),
                                apply(base, *inputs))


def test_the_low_rank_path_by_hand():
  """One LoRADense against x W + (alpha / r) (x A) B in NumPy float64."""
  layer = lora.LoRADense(6, rank=3, scale=2.5)
  x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
  params = layer.init(jax.random.PRNGKey(0), x)["params"]
  params = jax.tree.map(lambda p: p + 0.1, params)  # B != 0
  w, a, b = (np.asarray(params[k], np.float64) for k in ("kernel", "lora_a", "lora_b"))
  want = x @ w + 2.5 * (x @ a) @ b
  np.testing.assert_allclose(layer.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)
  without = {"kernel": params["kernel"]}  # no adapters: the base layer
  np.testing.assert_allclose(layer.apply({"params": without}, x), x @ w, rtol=1e-5, atol=1e-5)


def test_folding_gives_the_unmerged_models_logits(tiny):
  cfg, base, _, trained = tiny
  inputs = _inputs(cfg, seed=1)
  unmerged = model_lib.make_apply_fn(cfg)(lora.merge(base, trained), *inputs)
  folded = model_lib.make_apply_fn(lora.base_config(cfg))(
      lora.fold(lora.merge(base, trained), cfg.lora), *inputs)
  assert float(jnp.max(jnp.abs(unmerged - model_lib.make_apply_fn(cfg)(base, *inputs)))) > 0.1
  # float32, the delta added once into W instead of through the two small matmuls.
  np.testing.assert_allclose(folded, unmerged, atol=2e-5, rtol=2e-5)


def test_ddpo_with_lora_starts_at_its_reference_and_trains_only_the_adapters(tiny):
  cfg, base, adapters, _ = tiny
  ddpo_config = ddpo.PAPER_HPARAMS
  objective = objectives.with_lora(objectives.ddpo_objective(
      model_lib.make_apply_fn(cfg), ddpo_config, cached_reference=False))
  batch = _preference_batch(cfg)
  trainable = lora.initial_trainable(base, cfg.lora, jax.random.PRNGKey(1))
  (loss, metrics), grads = jax.value_and_grad(objective.loss_fn, has_aux=True)(
      trainable, base, batch, jax.random.PRNGKey(0))
  # The policy is the base plus zero: its log-probs are the reference's, bit for bit.
  for side in ("chosen", "rejected"):
    assert metrics[f"logps/policy_{side}"] == metrics[f"logps/ref_{side}"]
  assert loss == pytest.approx(np.log(2.0), abs=1e-6)
  # Gradients exist for the adapters only (the state holds nothing else); with B = 0
  # A's gradient is 0 and B's is not.
  assert jax.tree.structure(grads) == jax.tree.structure(adapters)
  q = grads["language_model"]["layers"]["self_attn"]["q_proj"]
  assert not np.any(q["lora_a"]) and np.any(q["lora_b"])


def _preference_batch(cfg):
  from rlhfv_jax.batch import PreferenceBatch, TokenSequences
  ids, mask, pixels = _inputs(cfg, rows=4, length=40, seed=3)
  loss_mask = np.zeros(ids.shape, bool)
  loss_mask[:, 30:] = True
  corrected = np.zeros(ids.shape, bool)
  corrected[:, 33:35] = True
  sequences = TokenSequences(input_ids=ids, attention_mask=mask,
                             targets=jnp.roll(ids, -1, axis=1), loss_mask=jnp.asarray(loss_mask),
                             corrected_mask=jnp.asarray(corrected))
  return PreferenceBatch(chosen=sequences, rejected=jax.tree.map(lambda x: x[::-1], sequences),
                         pixel_values=pixels[:4])


@pytest.mark.parametrize("settings, frozen, message", [
    (dict(rank=-1), (), "model.lora.rank=-1 must be >= 0"),
    (dict(targets=("q_proj", "fc9")), (), r"model.lora.targets=.*\['fc9'\]"),
    (dict(alpha=0.0), (), "model.lora.alpha=0.0 must be > 0"),
    (dict(dropout=0.1), (), "model.lora.dropout=0.1: only 0"),
    (dict(), ("vision_tower", "language_model"), "which optim.frozen=.* freezes"),
    (dict(trained=("multi_modal_projector",)), ("multi_modal_projector",),
     "model.lora.trained names 'multi_modal_projector', which optim.frozen"),
])
def test_bad_settings_are_named(settings, frozen, message):
  assert any(__import__("re").search(message, p)
             for p in lora.problems(_cfg(**settings), frozen)), lora.problems(
                 _cfg(**settings), frozen)
  assert not lora.problems(_cfg(), ("vision_tower",))
  assert not lora.problems(_cfg(rank=0, dropout=0.5), ("language_model",))  # off


def test_a_module_trained_in_full_is_part_of_what_trains(tiny):
  """``model.lora.trained``: a float32 copy of the projector beside the adapters; the
  policy uses it, the reference (the base) keeps the original."""
  cfg, base, _, _ = tiny
  s = _cfg(trained=("multi_modal_projector",)).lora
  trainable = lora.initial_trainable(base, s, jax.random.PRNGKey(1))
  assert set(trainable) == {"language_model", "multi_modal_projector"}
  for copy, original in zip(jax.tree.leaves(trainable["multi_modal_projector"]),
                            jax.tree.leaves(base["multi_modal_projector"])):
    assert copy.dtype == jnp.float32
    np.testing.assert_array_equal(copy, original)
  moved = jax.tree.map(lambda x: x + 1.0, trainable["multi_modal_projector"])
  policy = lora.merge(base, dict(trainable, multi_modal_projector=moved))
  # The policy's projector is the trained one, every other array the base's own.
  assert all(a is b for a, b in zip(jax.tree.leaves(policy["multi_modal_projector"]),
                                    jax.tree.leaves(moved)))
  assert all(a is b for a, b in zip(jax.tree.leaves(policy["vision_tower"]),
                                    jax.tree.leaves(base["vision_tower"])))
  with pytest.raises(ValueError, match="model.lora.trained names 'projector'"):
    lora.initial_trainable(base, _cfg(trained=("projector",)).lora, jax.random.PRNGKey(1))
