"""Gemma 3 vs transformers' PyTorch `Gemma3ForConditionalGeneration`: logits, log-probs,
generation, packing, the KV cache, bf16 / remat, HF import / export and its errors,
parameter counts of the real sizes."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from rlhfv_jax import logps
from rlhfv_jax import model as model_lib
from rlhfv_jax.data import packing
from rlhfv_jax.model import dry_run
from rlhfv_jax.model import generate as generate_lib
from rlhfv_jax.model import hf_io

from . import gemma3_reference as ref

torch, transformers = ref.torch, ref.transformers
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
ATOL = 1e-4  # float32 logits; measured ~3e-6


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(torch model, its save_pretrained dir, our config and params loaded from it)."""
  torch_model = ref.build_hf_gemma3(seed=3)
  path = tmp_path_factory.mktemp("gemma3") / "hf"
  torch_model.save_pretrained(path)
  cfg, params = hf_io.load_hf(path)
  return torch_model, path, cfg, params


def _forward(cfg, params, ids, mask, pixels, **kwargs):
  fn = jax.jit(model_lib.make_apply_fn(cfg, skip_prompt_logits=False))
  return np.asarray(fn(params, jnp.asarray(ids), jnp.asarray(mask),
                       None if pixels is None else jnp.asarray(pixels), **kwargs))


def _torch_logps(logits, targets):
  return np.take_along_axis(torch.log_softmax(torch.from_numpy(logits), -1).numpy(),
                            targets[..., None], -1)[..., 0]


def test_config_reads_the_reference(reference):
  _, _, cfg, _ = reference
  t = cfg.text
  assert t.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
  assert (t.sliding_window, t.query_pre_attn_scalar, t.rope_scaling_factor) == (5, 24, 8.0)
  assert (t.rope_theta, t.rope_local_theta, t.head_dim) == (1000.0, 100.0, 16)
  assert (cfg.mm_tokens_per_image, cfg.image_token_id, cfg.boi_token_id) == (4, 120, 118)
  assert model_lib.num_image_tokens(cfg) == 4 and cfg.family == "gemma3"


def test_logits_and_log_probs_match_transformers(reference):
  torch_model, _, cfg, params = reference
  # Right-padded rows longer than the window (5), images at different offsets, and a
  # text-only row (0 placeholders: its image is ignored).
  ids, mask = ref.make_rows([16, 10, 15, 13], 16, images=[True, True, False, True], seed=1)
  pixels = ref.random_pixels(4, seed=2)
  got = _forward(cfg, params, ids, mask, pixels)
  with_image, text_only = [0, 1, 3], [2]
  want = np.zeros_like(got)
  want[with_image] = ref.torch_logits(torch_model, ids[with_image], mask[with_image],
                                      pixels[with_image])
  want[text_only] = ref.torch_logits(torch_model, ids[text_only], mask[text_only])
  np.testing.assert_allclose(got[mask], want[mask], atol=ATOL, rtol=0)
  assert np.abs(want[mask]).max() > 1.0  # informative logits
  targets = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
  scored = mask & np.roll(mask, -1, axis=1)
  np.testing.assert_allclose(np.asarray(logps.token_logps(jnp.asarray(got), targets))[scored],
                             _torch_logps(want, targets)[scored], atol=ATOL, rtol=0)
  # A text-only batch without pixels is the same row.
  np.testing.assert_allclose(_forward(cfg, params, ids[2:3], mask[2:3], None)[0],
                             got[2], atol=1e-5, rtol=0)


def test_window_and_image_attention_matter(reference):
  """Guards the parity test: the window and the image blocks change these logits."""
  torch_model, _, cfg, params = reference
  ids, mask = ref.make_rows([16], 16, seed=1)
  pixels = ref.random_pixels(1, seed=2)
  base = ref.torch_logits(torch_model, ids, mask, pixels)
  inputs = ref.torch_inputs(ids, mask, pixels)
  inputs["token_type_ids"] = torch.zeros_like(inputs["token_type_ids"])
  with torch.no_grad():
    causal = torch_model(**inputs).logits.numpy()
  assert np.abs(causal - base).max() > 0.1
  wide = cfg.copy_and_resolve_references()
  wide.text.sliding_window = 64
  assert np.abs(_forward(wide, params, ids, mask, pixels) - base).max() > 0.1


def test_lora_adapts_the_gemma_projections(reference):
  _, _, cfg, params = reference
  adapted = cfg.copy_and_resolve_references()
  adapted.lora.rank = 2
  fresh = model_lib.init_params(adapted, jax.random.key(0))
  layer = fresh["language_model"]["layers"]
  for module, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                        ("mlp", ("gate_proj", "up_proj", "down_proj"))):
    for name in names:
      assert set(layer[module][name]) == {"kernel", "lora_a", "lora_b"}
  # PEFT's module names are transformers' own.
  torch_names = {n for n, _ in ref.build_hf_gemma3().named_modules()}
  for path in (("language_model", "layers", "self_attn", "q_proj"),
               ("language_model", "layers", "mlp", "down_proj")):
    names = hf_io.module_names(cfg, path)
    assert len(names) == 3 and set(names) <= torch_names, names


def test_hub_and_transformers5_config_files(tmp_path):
  """The google/gemma-3-27b-it config.json (transformers 4.50 layout) and our transformers
  5 export of the same architecture read as the named size."""
  hub = {
      "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999,
      "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144,
      "initializer_range": 0.02, "mm_tokens_per_image": 256, "model_type": "gemma3",
      "text_config": {
          "head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504,
          "model_type": "gemma3_text", "num_attention_heads": 32, "num_hidden_layers": 62,
          "num_key_value_heads": 16, "query_pre_attn_scalar": 168,
          "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
      "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
      "vision_config": {
          "hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
          "model_type": "siglip_vision_model", "num_attention_heads": 16,
          "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False}}
  (tmp_path / "hub").mkdir()
  (tmp_path / "hub" / "config.json").write_text(json.dumps(hub))
  want = model_lib.gemma3_config("27b")
  assert model_lib.config_from_hf(tmp_path / "hub") == want
  model_lib.to_hf_config(want).save_pretrained(tmp_path / "t5")
  assert "rope_parameters" in (tmp_path / "t5" / "config.json").read_text()
  assert model_lib.config_from_hf(tmp_path / "t5") == want


def test_left_padding_does_not_shift_the_window_and_cache_decode_is_exact(reference):
  _, _, cfg, params = reference
  lengths = [16, 13, 14]  # images end before slot 12 (the prefill) in every row
  left = ref.make_rows(lengths, 16, left_pad=True, seed=4)
  right = ref.make_rows(lengths, 16, seed=4)
  pixels = ref.random_pixels(3, seed=5)
  full = _forward(cfg, params, *left, pixels)
  unpadded = _forward(cfg, params, *right, pixels)
  for row, n in enumerate(lengths):
    np.testing.assert_allclose(full[row, 16 - n:], unpadded[row, :n], atol=1e-5, rtol=0)
  # Prefill 12 slots, then decode 1 + 3 tokens into the cache: the uncached logits.
  model = model_lib.family_of(cfg).module(cfg)
  ids, mask = jnp.asarray(left[0]), jnp.asarray(left[1])
  positions = jnp.asarray(np.maximum(np.cumsum(left[1], axis=1) - 1, 0))
  variables = {"params": params}
  features = model.apply(variables, jnp.asarray(pixels), method="encode_images")
  cache = model_lib.family_of(cfg).init_kv_cache(cfg, 3, 16)
  logits, cache = model.apply(variables, ids[:, :12], mask, features, positions=positions[:, :12],
                              kv_cache=cache, cache_index=0, method="decode")
  steps = [np.asarray(logits)]
  for start, stop in ((12, 13), (13, 16)):
    logits, cache = jax.jit(functools.partial(model.apply, method="decode"))(
        variables, ids[:, start:stop], mask, None, positions=positions[:, start:stop],
        kv_cache=cache, cache_index=jnp.int32(start))
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(steps, axis=1)[left[1]], full[left[1]],
                             atol=1e-5, rtol=0)
  np.testing.assert_array_equal(np.asarray(cache["pos"]), np.asarray(positions))


def test_greedy_generation_matches_transformers(reference):
  torch_model, _, cfg, params = reference
  ids, mask = ref.make_rows([11, 11, 11], 11, seed=6)  # unpadded: HF's window is ours
  pixels = ref.random_pixels(3, seed=7)
  never = ref.IMAGE_TOKEN_ID  # an EOS greedy decoding never picks (checked below)
  max_new = 12  # prompt + answer = 23 positions, the window 5
  got = np.asarray(generate_lib.generate(
      params, cfg, ids, mask, pixels, max_new_tokens=max_new, eos_token_id=never,
      pad_token_id=ref.PAD_TOKEN_ID))
  with torch.no_grad():
    want = torch_model.generate(**ref.torch_inputs(ids, mask, pixels), max_new_tokens=max_new,
                                do_sample=False, eos_token_id=never,
                                pad_token_id=ref.PAD_TOKEN_ID)[:, ids.shape[1]:].numpy()
  np.testing.assert_array_equal(got, want)
  assert not (got == never).any() and len(np.unique(got)) > 4


def _examples(cfg, rng, lengths):
  """Tokenized pairs (prompt text, chosen, rejected lengths) after BOS + an image."""
  n = model_lib.num_image_tokens(cfg)
  out = []
  for i, (p, c, r) in enumerate(lengths):
    prompt = np.concatenate([[cfg.bos_token_id, cfg.boi_token_id], [cfg.image_token_id] * n,
                             [cfg.eoi_token_id], rng.integers(3, 110, p)]).astype(np.int32)
    answer = lambda k: packing.Answer(rng.integers(3, 110, k).astype(np.int32),
                                       rng.random(k) < 0.3)
    out.append(packing.TokenizedExample(id=f"e{i}", index=i, epoch=0, image=b"",
                                         prompt_ids=prompt,
                                         answers={"chosen": answer(c), "rejected": answer(r)}))
  return out


def test_shared_prefix_rows_give_the_unshared_log_probs(reference):
  _, _, cfg, params = reference
  rng = np.random.default_rng(8)
  # Answers longer than the window: the rejected one's window must reach into the prompt
  # by position, not across the chosen answer's slots.
  examples = _examples(cfg, rng, [(3, 7, 9), (6, 2, 8), (1, 10, 3)])
  pixels = jnp.asarray(ref.random_pixels(3, seed=9))
  unshared = packing.assemble_batch(examples, pixels, 24, eos_id=cfg.eos_token_id, pad_id=0)
  shared = packing.assemble_batch(examples, pixels, 36, eos_id=cfg.eos_token_id, pad_id=0,
                                  shared_prefix=True)
  both = jax.jit(functools.partial(logps.answer_token_logps, model_lib.make_apply_fn(cfg)))
  for got, want, s, u in zip(both(params, shared), both(params, unshared),
                             (shared.chosen, shared.rejected),
                             (unshared.chosen, unshared.rejected)):
    for b in range(3):
      np.testing.assert_allclose(np.asarray(got[b])[np.asarray(s.loss_mask[b])],
                                 np.asarray(want[b])[np.asarray(u.loss_mask[b])],
                                 rtol=1e-5, atol=2e-5)


def test_bf16_and_remat_run_and_stay_close(reference):
  _, _, cfg, params = reference
  ids, mask = ref.make_rows([16, 12], 16, seed=10)
  pixels = ref.random_pixels(2, seed=11)
  want = _forward(cfg, params, ids, mask, pixels)
  low = cfg.copy_and_resolve_references()
  low.update(dtype="bfloat16", param_dtype="bfloat16", remat=True)
  low_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  got = _forward(low, low_params, ids, mask, pixels)
  assert got.dtype == np.float32
  err = np.abs(got[mask] - want[mask])
  assert err.max() < 0.1 * np.abs(want[mask]).max(), err.max()
  apply_fn = model_lib.make_apply_fn(low)
  loss = lambda p: jnp.mean(apply_fn(p, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels)))
  grads = jax.jit(jax.grad(loss))(low_params)
  assert all(bool(jnp.isfinite(g.astype(jnp.float32)).all()) for g in jax.tree.leaves(grads))


# --- HF import / export ----------------------------------------------------------------


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _edited_copy(src, dst, edit=lambda t: t, config_edit=lambda c: c):
  dst.mkdir()
  tensors = edit(safetensors.numpy.load_file(src / hf_io.SAFETENSORS_FILE))
  safetensors.numpy.save_file(tensors, dst / hf_io.SAFETENSORS_FILE, metadata={"format": "pt"})
  (dst / "config.json").write_text(json.dumps(config_edit(
      json.loads((src / "config.json").read_text()))))
  return dst


# The same checkpoint's tensor names as transformers versions wrote them; 5.24 (the
# fixture's save_pretrained) writes `language_model.model.*` and `vision_tower.*`.
NAME_LAYOUTS = {
    "hub": lambda k: re.sub(r"^vision_tower\.", "vision_tower.vision_model.", k),  # 4.50
    "module_paths": lambda k: (  # 4.52-4.57
        re.sub(r"^language_model\.model\.", "model.language_model.",
        re.sub(r"^vision_tower\.", "model.vision_tower.vision_model.",
        re.sub(r"^multi_modal_projector\.", "model.multi_modal_projector.", k)))),
}


def test_name_layouts_and_a_tied_head_copy_load_identically(reference, tmp_path):
  _, path, cfg, params = reference
  names = safetensors.numpy.load_file(path / hf_io.SAFETENSORS_FILE).keys()
  assert "multi_modal_projector.mm_input_projection_weight" in names
  assert any(n.startswith("vision_tower.encoder.") for n in names)
  for layout, rename in NAME_LAYOUTS.items():
    _edited_copy(path, tmp_path / layout, lambda t: {rename(k): v for k, v in t.items()})
    got_cfg, got = hf_io.load_hf(tmp_path / layout)
    assert got_cfg == cfg
    _assert_same_params(got, params)
  # An untied save of the tied model: `lm_head.weight` is the embedding's copy.
  with_head = lambda t: dict(t, **{"lm_head.weight": t["language_model.model.embed_tokens.weight"]})
  _assert_same_params(hf_io.load_hf(_edited_copy(path, tmp_path / "head", with_head))[1], params)


def test_projector_matrix_is_not_transposed(reference):
  torch_model, _, _, params = reference
  np.testing.assert_array_equal(
      params["multi_modal_projector"]["mm_input_projection_weight"],
      torch_model.model.multi_modal_projector.mm_input_projection_weight.detach().numpy())


def test_sharded_and_bf16_checkpoints(reference, tmp_path):
  torch_model, _, cfg, params = reference
  torch_model.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
  index = json.loads((tmp_path / "sharded" / hf_io.SAFETENSORS_INDEX_FILE).read_text())
  assert len(set(index["weight_map"].values())) > 2
  _assert_same_params(hf_io.load_hf(tmp_path / "sharded")[1], params)
  got_cfg, sharded = hf_io.load_hf_sharded(tmp_path / "sharded")
  assert got_cfg == cfg
  _assert_same_params(jax.device_get(sharded), params)
  bf16_model = ref.build_hf_gemma3(seed=3).to(torch.bfloat16)
  bf16_model.save_pretrained(tmp_path / "bf16")
  _, kept = hf_io.load_hf(tmp_path / "bf16", param_dtype="bfloat16")
  _assert_same_params(kept, jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), params))


@pytest.mark.parametrize("layout", ["hub", "transformers5"])
def test_export_round_trips_and_loads_in_transformers(reference, tmp_path, layout):
  torch_model, _, cfg, params = reference
  out = tmp_path / "export"
  hf_io.save_hf(cfg, params, out, layout=layout)
  names = safetensors.numpy.load_file(out / hf_io.SAFETENSORS_FILE).keys()
  vision = "vision_tower.vision_model." if layout == "hub" else "vision_tower.encoder."
  assert any(n.startswith(vision) for n in names)
  assert "language_model.lm_head.weight" not in names  # tied
  got_cfg, got = hf_io.load_hf(out)
  assert got_cfg == cfg
  _assert_same_params(got, params)
  loaded, info = transformers.Gemma3ForConditionalGeneration.from_pretrained(
      out, attn_implementation="eager", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  ids, mask = ref.make_rows([16, 12], 16, seed=12)
  pixels = ref.random_pixels(2, seed=13)
  np.testing.assert_allclose(ref.torch_logits(loaded.eval(), ids, mask, pixels),
                             ref.torch_logits(torch_model, ids, mask, pixels), atol=1e-6)
  with pytest.raises(ValueError, match="llava-hf"):
    hf_io.save_hf(cfg, params, tmp_path / "bad", layout="llava-hf")


def test_an_untied_model_round_trips(tmp_path):
  torch_model = ref.build_hf_gemma3(ref.TinySpec(tie_word_embeddings=False), seed=4)
  torch_model.save_pretrained(tmp_path / "hf")
  cfg, params = hf_io.load_hf(tmp_path / "hf")
  assert not cfg.text.tie_word_embeddings and "lm_head" in params
  hf_io.save_hf(cfg, params, tmp_path / "export")
  _assert_same_params(hf_io.load_hf(tmp_path / "export")[1], params)
  ids, mask = ref.make_rows([12], 12, seed=14)
  pixels = ref.random_pixels(1, seed=15)
  np.testing.assert_allclose(_forward(cfg, params, ids, mask, pixels)[0],
                             ref.torch_logits(torch_model, ids, mask, pixels)[0], atol=ATOL)


def test_checkpoint_errors_name_what_is_wrong(reference, tmp_path):
  _, path, _, _ = reference
  (tmp_path / "qwen").mkdir()
  (tmp_path / "qwen" / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
  with pytest.raises(ValueError, match=r"qwen2_5_vl.*'llava'.*'gemma3'"):
    hf_io.load_hf(tmp_path / "qwen")
  with pytest.raises(ValueError, match="supported"):
    model_lib.config_from_hf(tmp_path / "qwen")

  nine = _edited_copy(path, tmp_path / "nine",
                      config_edit=lambda c: dict(c, mm_tokens_per_image=9))
  with pytest.raises(ValueError, match=r"mm_tokens_per_image=9 .*4x4"):
    hf_io.load_hf(nine)
  resized = _edited_copy(path, tmp_path / "resized")
  (resized / "preprocessor_config.json").write_text(json.dumps(
      {"image_processor_type": "Gemma3ImageProcessor", "size": {"height": 64, "width": 64}}))
  with pytest.raises(ValueError, match=r"64x64.*image_size is 32"):
    hf_io.load_hf(resized)
  capped = _edited_copy(path, tmp_path / "capped", config_edit=lambda c: dict(
      c, text_config=dict(c["text_config"], final_logit_softcapping=30.0)))
  with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
    hf_io.load_hf(capped)

  q_norm = "language_model.model.layers.1.self_attn.q_norm.weight"
  missing = _edited_copy(path, tmp_path / "missing",
                         lambda t: {k: v for k, v in t.items() if k != q_norm})
  with pytest.raises(ValueError, match=re.escape(q_norm)):
    hf_io.load_hf(missing)
  projector = "multi_modal_projector.mm_input_projection_weight"
  transposed = _edited_copy(path, tmp_path / "transposed",
                            lambda t: dict(t, **{projector: np.ascontiguousarray(t[projector].T)}))
  with pytest.raises(ValueError, match=rf"{projector}.*\(64, 32\).*expected \(32, 64\)"):
    hf_io.load_hf_sharded(transposed)


# --- configs and parameter counts --------------------------------------------------------


def torch_meta_count(hf) -> int:
  """What transformers itself allocates for this config (on the meta device)."""
  with torch.device("meta"):
    model = transformers.Gemma3ForConditionalGeneration(hf)
  return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size, low, high", [("4b", 4.2e9, 4.4e9), ("12b", 12.0e9, 12.3e9),
                                             ("27b", 27.2e9, 27.5e9)])
def test_real_size_param_counts(size, low, high):
  cfg = model_lib.gemma3_config(size)
  counts = dry_run.param_counts(cfg)
  hf = model_lib.to_hf_config(cfg)
  assert counts["total"] == torch_meta_count(hf)
  assert low < counts["total"] < high
  assert counts["vision_tower"] == 416_866_032  # SigLIP-So400m/14 at 896px, no head
  # to_hf_config -> config_from_hf is the identity.
  assert model_lib.config_from_hf(hf) == cfg


def test_named_configs():
  cfg = model_lib.gemma3_config("27b")
  t = cfg.text
  assert (t.head_dim, t.query_pre_attn_scalar, t.num_kv_heads) == (128, 168, 16)
  assert cfg.text.layer_types.count("full_attention") == 10 and cfg.text.num_layers == 62
  assert (cfg.image_token_id, cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id) == (
      262144, 106, 2, 0)
  tiny = model_lib.gemma3_config("tiny", vocab_size=100)
  assert set(tiny.text.layer_types) == {"sliding_attention", "full_attention"}
  assert (tiny.image_token_id, tiny.eoi_token_id, tiny.boi_token_id, tiny.eos_token_id) == (
      99, 98, 97, 96)
  assert model_lib.num_image_tokens(tiny) == 4 and tiny.logits_chunk == 0
  with pytest.raises(ValueError, match="mm_tokens_per_image=3"):
    tiny.mm_tokens_per_image = 3
    model_lib.validate_config(tiny)


@pytest.mark.slow
def test_dry_run_cli_reports_the_torch_count():
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "rlhfv_jax.model.dry_run", "--family", "gemma3",
                        "--size", "27b", "--param_dtype", "bfloat16"], env=env,
                       capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout
  total = torch_meta_count(model_lib.to_hf_config(model_lib.gemma3_config("27b")))
  assert f"total: {total:>15,d}" in out and "256 image tokens" in out
