"""Model configs: named sizes, validation, HF LlavaConfig round trip."""

from __future__ import annotations

import json

import pytest

from rlhfv_jax import model as model_lib

from . import hf_reference as ref


@pytest.mark.parametrize("size", ["tiny", "7b", "13b"])
def test_named_sizes_round_trip_through_hf_config(size):
  cfg = model_lib.llava_config(size)
  assert model_lib.config_from_hf(model_lib.to_hf_config(cfg)) == cfg


def test_llava_1_5_token_ids_and_image_tokens():
  cfg = model_lib.llava_config("7b")
  assert (cfg.text.vocab_size, cfg.image_token_id, cfg.pad_token_id) == (32064, 32000, 32001)
  assert model_lib.num_image_tokens(cfg) == 576  # (336 / 14) ** 2, CLS dropped.
  assert model_lib.num_image_tokens(model_lib.llava_config("tiny")) == 16
  small = model_lib.llava_config("tiny", vocab_size=64)
  assert (small.image_token_id, small.pad_token_id) == (63, 62)


def test_config_from_hf_reads_the_reference_config(tmp_path):
  hf = ref.hf_llava_config(ref.TinySpec(num_kv_heads=1, feature_layer=1, rope_theta=123.0,
                                        feature_select_strategy="full"))
  hf.save_pretrained(tmp_path)
  cfg = model_lib.config_from_hf(tmp_path)
  assert cfg == model_lib.config_from_hf(hf)
  assert (cfg.text.num_kv_heads, cfg.text.head_dim, cfg.text.rope_theta) == (1, 16, 123.0)
  assert (cfg.vision.feature_layer, cfg.vision.feature_select_strategy) == (1, "full")
  assert model_lib.num_image_tokens(cfg) == hf.image_seq_length == 17
  assert cfg.image_token_id == ref.IMAGE_TOKEN_ID


def test_unsupported_hf_variants_are_refused():
  hf = ref.hf_llava_config(ref.TinySpec())
  hf.text_config.rope_parameters = {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
  with pytest.raises(NotImplementedError, match="RoPE scaling"):
    model_lib.config_from_hf(hf)
  hf = ref.hf_llava_config(ref.TinySpec())
  hf.vision_feature_layer = [-2, -1]
  with pytest.raises(NotImplementedError, match="vision_feature_layer"):
    model_lib.config_from_hf(hf)


@pytest.mark.parametrize("field, value, message", [
    ("vision.patch_size", 7, "not a multiple of vision.patch_size"),
    ("text.num_kv_heads", 3, "not a multiple of text.num_kv_heads"),
    ("vision.feature_layer", 5, "vision.feature_layer=5"),
    ("image_token_id", 40000, "image_token_id=40000 is outside"),
    ("projector.hidden_act", "mish", "projector.hidden_act='mish'"),
])
def test_validation_names_the_field(field, value, message):
  cfg = model_lib.llava_config("tiny")
  section, _, name = field.rpartition(".")
  (cfg[section] if section else cfg)[name] = value
  with pytest.raises(ValueError, match=message):
    model_lib.validate_config(cfg)
  with pytest.raises(ValueError, match=message):
    model_lib.Llava(cfg)


# config.json of llava-hf/llava-1.5-7b-hf as published (transformers 4.36 era): most
# fields are left to the CLIPVisionConfig / LlamaConfig defaults.
LLAVA_15_7B_HF_CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100,
    "image_token_index": 32000, "model_type": "llava", "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5",
                    "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096,
                    "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16",
                    "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16",
    "transformers_version": "4.36.0.dev0",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16,
                      "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
                      "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}


def test_published_llava_1_5_config_json_reads_as_the_7b_preset(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(LLAVA_15_7B_HF_CONFIG))
  assert model_lib.config_from_hf(tmp_path) == model_lib.llava_config("7b")
  with_13b_text = json.loads(json.dumps(LLAVA_15_7B_HF_CONFIG))
  with_13b_text["text_config"].update(hidden_size=5120, intermediate_size=13824,
                                      num_attention_heads=40, num_hidden_layers=40,
                                      num_key_value_heads=40)
  (tmp_path / "config.json").write_text(json.dumps(with_13b_text))
  assert model_lib.config_from_hf(tmp_path / "config.json") == model_lib.llava_config("13b")
