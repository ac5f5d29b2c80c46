"""PEFT LoRA adapters: the files PEFT itself writes, logits through `PeftModel`, bad input."""

from __future__ import annotations

import json
import re
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy

from rlhfv_jax import model as model_lib
from rlhfv_jax.model import hf_io, lora, peft_io

from . import hf_reference as ref

torch, transformers = ref.torch, ref.transformers
peft = pytest.importorskip("peft")

VOCAB_SIZE = 100
NUM_LAYERS = 2  # the tiny decoder's
ATOL = RTOL = 2e-4  # f32 Flax vs f32 PyTorch (eager attention) logits


def lora_config(**changes):
  cfg = model_lib.llava_config("tiny", vocab_size=VOCAB_SIZE)
  cfg.lora.update({"rank": 4, "alpha": 8.0, **changes})
  return cfg


def random_base_and_adapters(cfg, seed=0):
  """A random base (lifted off the init's near-zero embeddings / unit norms) and adapters
  with B != 0, so the adapters change the logits."""
  rng = np.random.default_rng(seed)
  base = model_lib.init_params(lora.base_config(cfg), jax.random.key(seed))
  base = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(np.float32), base)
  adapters = lora.init_adapters(base, cfg.lora, jax.random.key(seed + 1))
  adapters = jax.tree.map(lambda x: x + 0.3 * rng.normal(size=x.shape).astype(np.float32),
                          adapters)
  return base, adapters


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(cfg, base, adapters, base dir, adapter dir): the base via `hf_io`, adapters via PEFT."""
  cfg = lora_config()
  base, adapters = random_base_and_adapters(cfg)
  path = tmp_path_factory.mktemp("peft")
  hf_io.save_hf_llava(lora.base_config(cfg), base, path / "base")
  # A local base path: PEFT looks the base up when loading (no network in tests).
  peft_io.save_peft_adapter(cfg, adapters, path / "adapter",
                            base_model_name_or_path=str(path / "base"))
  return cfg, base, adapters, path / "base", path / "adapter"


def base_shapes(cfg):
  return model_lib.param_shapes(lora.base_config(cfg))


def hf_llava(path):
  model, info = transformers.LlavaForConditionalGeneration.from_pretrained(
      path, attn_implementation="eager", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  return model.eval()


def tensors(directory):
  return safetensors.numpy.load_file(directory / peft_io.ADAPTER_WEIGHTS_FILE)


def read_config(directory):
  return json.loads((directory / peft_io.ADAPTER_CONFIG_FILE).read_text())


def lm_projections(cfg):
  """transformers module paths of the decoder projections `model.lora.targets` adapts."""
  return sorted(m for path, _ in peft_io._adapted(
      lora.init_adapters(base_shapes(cfg), cfg.lora, jax.random.key(0)))
      for m in hf_io.module_names(cfg, path))


def test_module_names_are_the_transformers_module_paths(exported):
  cfg, base, _, base_dir, _ = exported
  modules = dict(hf_llava(base_dir).named_modules())
  for leaf_path, _ in hf_io._leaves(base):
    for name in hf_io.module_names(cfg, leaf_path[:-1]):
      assert name in modules, (leaf_path, name)
  assert "model.language_model.layers.1.self_attn.q_proj" in hf_io.module_names(
      cfg, ("language_model", "layers", "self_attn", "q_proj"))


def test_files_are_what_peft_writes(exported, tmp_path):
  """PEFT, given our adapter_config.json, adapts the same modules and saves the same keys,
  shapes and config; what PEFT saves loads back, and re-exports to the same file."""
  cfg, _, _, base_dir, adapter_dir = exported
  config = read_config(adapter_dir)
  assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
  assert config["target_modules"] == (
      r"model\.language_model\.layers\.\d+\.(?:mlp\.down_proj|mlp\.gate_proj|mlp\.up_proj|"
      r"self_attn\.k_proj|self_attn\.o_proj|self_attn\.q_proj|self_attn\.v_proj)")

  # PEFT's own adapter: init_lora_weights=False makes B random too.
  peft_config = peft.LoraConfig.from_pretrained(adapter_dir)
  peft_config.init_lora_weights = False
  torch.manual_seed(0)
  peft_model = peft.get_peft_model(hf_llava(base_dir), peft_config)
  targeted = sorted(peft_model.base_model.targeted_module_names)
  assert targeted == lm_projections(cfg) and len(targeted) == 7 * NUM_LAYERS
  peft_model.save_pretrained(tmp_path / "native")
  native, ours = tensors(tmp_path / "native"), tensors(adapter_dir)
  assert sorted(native) == sorted(ours)
  assert "base_model.model.model.language_model.layers.1.mlp.down_proj.lora_A.weight" in ours
  for key in native:
    assert (native[key].shape, native[key].dtype) == (ours[key].shape, ours[key].dtype), key
  native_config = read_config(tmp_path / "native")
  for field, value in config.items():
    if field != "init_lora_weights":  # set above
      assert native_config[field] == value, field

  adapters = peft_io.load_peft_adapter(tmp_path / "native", cfg, base_shapes(cfg))
  q_proj = adapters["language_model"]["layers"]["self_attn"]["q_proj"]
  np.testing.assert_array_equal(
      q_proj["lora_b"][1],
      native["base_model.model.model.language_model.layers.1.self_attn.q_proj.lora_B.weight"].T)
  peft_io.save_peft_adapter(cfg, adapters, tmp_path / "again")
  again = tensors(tmp_path / "again")
  for key in native:
    np.testing.assert_array_equal(again[key], native[key], err_msg=key)


def test_logits_match_peft_model(exported):
  cfg, base, adapters, base_dir, adapter_dir = exported
  hf_base = hf_llava(base_dir)
  peft_model = peft.PeftModel.from_pretrained(hf_base, adapter_dir).eval()
  loaded = peft.get_peft_model_state_dict(peft_model)
  saved = tensors(adapter_dir)
  assert sorted(loaded) == sorted(saved)
  for key, value in saved.items():
    np.testing.assert_array_equal(loaded[key].numpy(), value, err_msg=key)

  n = model_lib.num_image_tokens(cfg)
  ids, mask = ref.make_prompts(2, n + 6, n, lengths=[n + 6, n + 4])
  ids = np.where(ids == ref.IMAGE_TOKEN_ID, cfg.image_token_id, ids % 90)
  pixels = ref.random_pixels(2, seed=4)
  apply_fn = jax.jit(model_lib.make_apply_fn(cfg, skip_prompt_logits=False))
  logits = np.asarray(apply_fn(lora.merge(base, adapters), ids, mask, pixels))
  hf_logits = ref.torch_logits(peft_model, ids, mask, pixels)
  np.testing.assert_allclose(logits[mask], hf_logits[mask], atol=ATOL, rtol=RTOL)
  with peft_model.disable_adapter():  # the base alone: the adapters do matter
    base_logits = ref.torch_logits(peft_model, ids, mask, pixels)
  assert np.abs(base_logits - hf_logits)[mask].max() > 100 * ATOL


def test_load_gives_back_the_saved_arrays(exported, tmp_path):
  cfg, _, adapters, _, adapter_dir = exported
  loaded = peft_io.load_peft_adapter(adapter_dir, cfg, base_shapes(cfg))
  fresh = lora.init_adapters(base_shapes(cfg), cfg.lora, jax.random.key(0))
  assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
  for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(adapters)):
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.asarray(want))

  # Keys of transformers < 4.52 (`language_model.model.*` module paths) load the same.
  old_layout = tmp_path / "old_layout"
  old_layout.mkdir()
  shutil.copy(adapter_dir / peft_io.ADAPTER_CONFIG_FILE, old_layout)
  safetensors.numpy.save_file(
      {k.replace("base_model.model.model.language_model.",
                 "base_model.model.language_model.model."): v
       for k, v in tensors(adapter_dir).items()},
      old_layout / peft_io.ADAPTER_WEIGHTS_FILE)
  jax.tree.map(np.testing.assert_array_equal,
               peft_io.load_peft_adapter(old_layout, cfg, base_shapes(cfg)), loaded)


def test_adapter_subset_of_targets_round_trips(tmp_path):
  cfg = lora_config(targets=("q_proj", "v_proj"))
  base, adapters = random_base_and_adapters(cfg, seed=3)
  peft_io.save_peft_adapter(cfg, adapters, tmp_path)
  assert read_config(tmp_path)["target_modules"] == (
      r"model\.language_model\.layers\.\d+\.self_attn\.(?:q_proj|v_proj)")
  assert len(tensors(tmp_path)) == 2 * 2 * NUM_LAYERS
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, np.asarray(y)),
               peft_io.load_peft_adapter(tmp_path, cfg, base_shapes(cfg)), adapters)


def edited(src, dst, config=None, tensors_fn=None):
  """A copy of adapter directory `src` with config fields replaced / tensors edited."""
  dst.mkdir()
  (dst / peft_io.ADAPTER_CONFIG_FILE).write_text(json.dumps({**read_config(src),
                                                             **(config or {})}))
  weights = tensors(src)
  safetensors.numpy.save_file(tensors_fn(weights) if tensors_fn else weights,
                              dst / peft_io.ADAPTER_WEIGHTS_FILE)
  return dst


Q0_A = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.mark.parametrize("config, cfg_changes, match", [
    ({}, dict(rank=8), r"r=4, but model\.lora\.rank=8"),
    ({}, dict(alpha=16.0), r"lora_alpha=8, but model\.lora\.alpha=16\.0"),
    ({"peft_type": "IA3"}, {}, r"peft_type='IA3'"),
    ({"bias": "all"}, {}, r"bias='all'"),
    ({"use_dora": True}, {}, r"use_dora=True is not supported"),
    ({"use_rslora": True}, {}, r"use_rslora=True is not supported"),
    ({"rank_pattern": {"q_proj": 8}}, {}, r"rank_pattern=.* is not supported"),
    ({"target_modules": ["q_proj", "qkv_proj"]}, {}, r"target_modules names \['qkv_proj'\]"),
    # A list of names adapts CLIP's q_proj / v_proj too.
    ({"target_modules": ["q_proj", "v_proj"]}, dict(targets=("q_proj", "v_proj")),
     r"adapts 4 modules LoRA cannot adapt.*'model\.vision_tower\.encoder\.layers\.0\."),
    ({"target_modules": r".*\.(q_proj|lm_head)"}, {},
     r"cannot adapt.*\['lm_head', 'model\.vision_tower\.encoder\.layers\.0\.self_attn\.q_proj'"),
    ({"target_modules": r".*language_model.*\.(q_proj|v_proj)"}, {},
     r"adapts \['q_proj', 'v_proj'\], but model\.lora\.targets=\('q_proj', 'k_proj'"),
    ({}, dict(targets=("q_proj",)), r"adapts \['down_proj', .*model\.lora\.targets=\('q_proj',\)"),
    ({"target_modules": r"model\.language_model\.layers\.0\.(?:self_attn|mlp)\.\w+"}, {},
     r"leaves out \['model\.language_model\.layers\.1\.mlp\.down_proj'"),
])
def test_load_rejects_adapters_that_do_not_fit(exported, tmp_path, config, cfg_changes,
                                               match):
  _, _, _, _, adapter_dir = exported
  bad = edited(adapter_dir, tmp_path / "bad", config=config)
  cfg = lora_config(**cfg_changes)
  with pytest.raises(ValueError, match=match) as error:
    peft_io.load_peft_adapter(bad, cfg, base_shapes(cfg))
  assert peft_io.ADAPTER_CONFIG_FILE in str(error.value)


def test_load_rejects_an_adapter_for_another_base(tmp_path):
  other = lora_config()
  other.text.update(hidden_size=96, head_dim=24)
  _, adapters = random_base_and_adapters(other)
  peft_io.save_peft_adapter(other, adapters, tmp_path)
  cfg = lora_config()
  with pytest.raises(ValueError, match=(
      r"adapter_model\.safetensors: tensor base_model\.model\.model\.language_model\.layers\."
      r"\d\.\w+\.\w+_proj\.lora_[AB]\.weight has shape \((4, 96|96, 4)\), expected "
      r"\((4, 64|64, 4)\).*another base")):
    peft_io.load_peft_adapter(tmp_path, cfg, base_shapes(cfg))


def test_load_rejects_missing_and_unexpected_tensors_and_files(exported, tmp_path):
  cfg, _, _, _, adapter_dir = exported
  shapes = base_shapes(cfg)
  missing = edited(adapter_dir, tmp_path / "missing",
                   tensors_fn=lambda t: {k: v for k, v in t.items() if k != Q0_A})
  with pytest.raises(ValueError, match=r"1 tensors missing.*" + re.escape(Q0_A)):
    peft_io.load_peft_adapter(missing, cfg, shapes)
  extra_key = Q0_A.replace("layers.0", "layers.2")
  extra = edited(adapter_dir, tmp_path / "extra",
                 tensors_fn=lambda t: {**t, extra_key: t[Q0_A]})
  with pytest.raises(ValueError, match=r"1 tensors the model has no place for.*"
                     + re.escape(extra_key)):
    peft_io.load_peft_adapter(extra, cfg, shapes)
  duplicate = edited(adapter_dir, tmp_path / "duplicate", tensors_fn=lambda t: {
      **t, Q0_A.replace("model.model.language_model.", "model.language_model.model."): t[Q0_A]})
  with pytest.raises(ValueError, match=r"duplicates"):
    peft_io.load_peft_adapter(duplicate, cfg, shapes)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"No adapter_config\.json in .*empty"):
    peft_io.load_peft_adapter(tmp_path / "empty", cfg, shapes)
  shutil.copy(adapter_dir / peft_io.ADAPTER_CONFIG_FILE, tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match=r"No adapter_model\.safetensors"):
    peft_io.load_peft_adapter(tmp_path / "empty", cfg, shapes)


def test_save_rejects_adapters_that_do_not_fit_the_config(exported, tmp_path):
  cfg, _, adapters, _, _ = exported
  with pytest.raises(ValueError, match=r"model\.lora\.rank=0: LoRA is off"):
    peft_io.save_peft_adapter(lora.base_config(cfg), adapters, tmp_path)
  with pytest.raises(ValueError, match=r"have rank 4 .* model\.lora\.rank=8"):
    peft_io.save_peft_adapter(lora_config(rank=8), adapters, tmp_path)
  with pytest.raises(ValueError, match=r"adapt only language_model/\.\.\./\{q_proj\}"):
    peft_io.save_peft_adapter(lora_config(targets=("q_proj",)), adapters, tmp_path)
  with pytest.raises(ValueError, match=r"No lora_a / lora_b leaves"):
    peft_io.save_peft_adapter(cfg, {}, tmp_path)


def test_gemma3_adapters_round_trip_through_peft(tmp_path):
  """A Gemma 3 LoRA run's adapters: PEFT puts them on transformers' Gemma 3 and gives the
  project's logits (the export_hf stage writes them for a LoRA run of either family)."""
  from . import gemma3_reference as gref
  hf_base = gref.build_hf_gemma3()
  hf_base.save_pretrained(tmp_path / "base")
  cfg = model_lib.config_from_hf(tmp_path / "base")
  cfg.lora.update(rank=4, alpha=8.0)
  _, base = hf_io.load_hf(tmp_path / "base")
  rng = np.random.default_rng(0)
  adapters = jax.tree.map(lambda x: x + 0.3 * rng.normal(size=x.shape).astype(np.float32),
                          lora.init_adapters(base, cfg.lora, jax.random.key(1)))
  peft_io.save_peft_adapter(cfg, adapters, tmp_path / "adapter",
                            base_model_name_or_path=str(tmp_path / "base"))
  peft_model = peft.PeftModel.from_pretrained(hf_base, tmp_path / "adapter").eval()
  assert sorted(peft.get_peft_model_state_dict(peft_model)) == sorted(
      tensors(tmp_path / "adapter"))
  ids, mask = gref.make_rows([14, 11], 14)
  pixels = gref.random_pixels(2, seed=4)
  logits = np.asarray(jax.jit(model_lib.make_apply_fn(cfg, skip_prompt_logits=False))(
      lora.merge(base, adapters), ids, mask, pixels))
  hf_logits = gref.torch_logits(peft_model, ids, mask, pixels)
  np.testing.assert_allclose(logits[mask], hf_logits[mask], atol=ATOL, rtol=RTOL)
  with peft_model.disable_adapter():
    assert np.abs(gref.torch_logits(peft_model, ids, mask, pixels) - hf_logits)[mask].max() > (
        100 * ATOL)
  loaded = peft_io.load_peft_adapter(tmp_path / "adapter", cfg, base_shapes(cfg))
  jax.tree.map(np.testing.assert_array_equal, loaded, adapters)
