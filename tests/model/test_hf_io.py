"""HF checkpoint import/export: name layouts, shards, bf16, round trips through transformers."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
import safetensors.numpy
from jax.sharding import Mesh, NamedSharding

from rlhfv_jax import model as model_lib
from rlhfv_jax.model import hf_io

from . import cpu_process
from . import hf_reference as ref
from .hf_export_worker import fsdp_spec, tiny_export_params

torch, transformers = ref.torch, ref.transformers


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _edited_copy(src_dir, dst_dir, edit):
  """Copies a single-file checkpoint to `dst_dir` with its tensor dict passed through `edit`."""
  dst_dir.mkdir()
  tensors = edit(safetensors.numpy.load_file(src_dir / hf_io.SAFETENSORS_FILE))
  safetensors.numpy.save_file(tensors, dst_dir / hf_io.SAFETENSORS_FILE,
                              metadata={"format": "pt"})
  (dst_dir / "config.json").write_text((src_dir / "config.json").read_text())
  return dst_dir


def _rename_tensors(src_dir, dst_dir, rename):
  return _edited_copy(src_dir, dst_dir, lambda t: {rename(k): v for k, v in t.items()})


def _from_pretrained(path):
  loaded, info = transformers.LlavaForConditionalGeneration.from_pretrained(
      path, attn_implementation="eager", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  return loaded.eval()


# Tensor-name layouts of the same checkpoint as written by different transformers versions.
NAME_LAYOUTS = {
    # llava-hf hub files (transformers 4.x conversion script).
    "hub": lambda k: re.sub(r"^vision_tower\.", "vision_tower.vision_model.", k),
    # transformers >= 4.52 module paths.
    "module_paths": lambda k: (
        re.sub(r"^language_model\.lm_head\.", "lm_head.",
        re.sub(r"^language_model\.model\.", "model.language_model.",
        re.sub(r"^vision_tower\.", "model.vision_tower.vision_model.",
        re.sub(r"^multi_modal_projector\.", "model.multi_modal_projector.", k))))),
}


def test_name_layouts_load_identically(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint()
  names = safetensors.numpy.load_file(path / hf_io.SAFETENSORS_FILE).keys()
  assert any(n.startswith("vision_tower.encoder.") for n in names)  # transformers 5 layout.
  cfg, params = hf_io.load_hf_llava(path)
  for layout, rename in NAME_LAYOUTS.items():
    _rename_tensors(path, tmp_path / layout, rename)
    layout_cfg, layout_params = hf_io.load_hf_llava(tmp_path / layout)
    assert layout_cfg == cfg
    _assert_same_params(layout_params, params)


def test_sharded_checkpoint_loads_like_single_file(hf_checkpoint):
  _, single = hf_checkpoint(seed=1)
  _, sharded = hf_checkpoint(seed=1, max_shard_size="40KB")
  index = json.loads((sharded / hf_io.SAFETENSORS_INDEX_FILE).read_text())
  assert len(set(index["weight_map"].values())) > 2
  assert not (sharded / hf_io.SAFETENSORS_FILE).exists()
  _assert_same_params(hf_io.load_hf_llava(sharded)[1], hf_io.load_hf_llava(single)[1])


def test_bf16_checkpoint(hf_checkpoint, tmp_path):
  torch_model, path = hf_checkpoint(seed=2)
  torch_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  _, f32_params = hf_io.load_hf_llava(path)
  _, upcast = hf_io.load_hf_llava(tmp_path / "bf16")
  _, kept = hf_io.load_hf_llava(tmp_path / "bf16", param_dtype="bfloat16")
  rounded = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16), f32_params)
  _assert_same_params(kept, rounded)
  _assert_same_params(upcast, jax.tree.map(lambda x: x.astype(np.float32), rounded))
  assert {x.dtype for x in jax.tree.leaves(kept)} == {np.dtype(jax.numpy.bfloat16)}


@pytest.mark.parametrize("layout", hf_io.LAYOUTS)
def test_export_round_trip_through_transformers(hf_checkpoint, tmp_path, layout):
  torch_model, path = hf_checkpoint(ref.TinySpec(num_kv_heads=4, feature_layer=-1), seed=3)
  cfg, params = hf_io.load_hf_llava(path)
  hf_io.save_hf_llava(cfg, params, tmp_path / "export", layout=layout)
  reloaded = _from_pretrained(tmp_path / "export")
  for name, tensor in torch_model.state_dict().items():
    np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)
  n = model_lib.num_image_tokens(cfg)
  ids, mask = ref.make_prompts(2, n + 6, n, lengths=[n + 6, n + 3])
  pixels = ref.random_pixels(2)
  np.testing.assert_array_equal(ref.torch_logits(reloaded, ids, mask, pixels),
                                ref.torch_logits(torch_model, ids, mask, pixels))
  assert hf_io.load_hf_llava(tmp_path / "export")[0] == cfg


def test_exported_flax_init_runs_identically_in_transformers(tmp_path):
  """Export of Flax-born params (no HF origin): transformers reproduces the Flax logits."""
  cfg = model_lib.llava_config("tiny", vocab_size=100)
  cfg.text.tie_word_embeddings = True
  params = model_lib.init_params(cfg, jax.random.key(1))
  rng = np.random.default_rng(2)  # Lift the init's tiny embeddings / unit norms off zero / one.
  params = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(np.float32), params)
  hf_io.save_hf_llava(cfg, params, tmp_path / "export")
  hf_model = _from_pretrained(tmp_path / "export")
  n = model_lib.num_image_tokens(cfg)
  ids, mask = ref.make_prompts(2, n + 6, n, lengths=[n + 6, n + 4])
  ids = np.where(ids == ref.IMAGE_TOKEN_ID, cfg.image_token_id, ids % 90)
  pixels = ref.random_pixels(2, seed=4)
  logits = np.asarray(jax.jit(model_lib.make_apply_fn(cfg))(params, ids, mask, pixels))
  np.testing.assert_allclose(logits[mask], ref.torch_logits(hf_model, ids, mask, pixels)[mask],
                             atol=2e-4, rtol=2e-4)


def test_load_errors_name_the_problem(hf_checkpoint, tmp_path):
  _, path = hf_checkpoint(seed=5)
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_io.load_hf_llava(tmp_path)  # No checkpoint there at all.
  (tmp_path / "config.json").write_text((path / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match=r"No model\.safetensors"):
    hf_io.load_hf_llava(tmp_path)

  _rename_tensors(path, tmp_path / "missing",
                  lambda k: k.replace("layers.1.mlp.up_proj", "layers.1.mlp.upp_proj"))
  with pytest.raises(ValueError, match=r"missing.*layers\.1\.mlp\.up_proj") as error:
    hf_io.load_hf_llava(tmp_path / "missing")
  assert "missing" in str(error.value) and str(tmp_path / "missing") in str(error.value)

  wrong_shape = _edited_copy(path, tmp_path / "shape", lambda t: {
      **t, "multi_modal_projector.linear_1.bias": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"linear_1\.bias.*shape \(3,\).*expected \(64,\)"):
    hf_io.load_hf_llava(wrong_shape)

  extra = _edited_copy(path, tmp_path / "extra", lambda t: {
      **t, "multi_modal_projector.linear_3.weight": np.zeros((2, 2), np.float32)})
  with pytest.raises(ValueError, match=r"does not use.*linear_3"):
    hf_io.load_hf_llava(extra)

  duplicated = _edited_copy(path, tmp_path / "duplicated", lambda t: {
      **t, "model.multi_modal_projector.linear_2.bias": t["multi_modal_projector.linear_2.bias"]})
  with pytest.raises(ValueError,
                     match=r"duplicates .*both are 'multi_modal_projector\.linear_2\.bias'"):
    hf_io.load_hf_llava(duplicated)


def _exported_tensors(path):
  return safetensors.numpy.load_file(path / hf_io.SAFETENSORS_FILE)


def _assert_same_export(got_dir, want_dir):
  got, want = _exported_tensors(got_dir), _exported_tensors(want_dir)
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name].dtype == want[name].dtype, name
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  assert (json.loads((got_dir / "config.json").read_text())
          == json.loads((want_dir / "config.json").read_text()))


def test_export_of_params_sharded_over_devices_equals_the_host_export(tmp_path):
  cfg, params = tiny_export_params(model_lib)
  mesh = Mesh(np.array(jax.devices()), ("fsdp",))
  assert mesh.size == 4  # tests/conftest.py forces 4 CPU devices
  sharded = jax.tree.map(
      lambda x: jax.device_put(x, NamedSharding(mesh, fsdp_spec(x.shape, mesh.size))), params)
  assert any(len(leaf.sharding.device_set) == 4 and not leaf.sharding.is_fully_replicated
             for leaf in jax.tree.leaves(sharded))
  bf16 = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), sharded)
  hf_io.save_hf_llava(cfg, params, tmp_path / "host")
  hf_io.save_hf_llava(cfg, sharded, tmp_path / "sharded")
  _assert_same_export(tmp_path / "sharded", tmp_path / "host")
  hf_io.save_hf_llava(cfg, bf16, tmp_path / "bf16")
  assert {t.dtype.name for t in _exported_tensors(tmp_path / "bf16").values()} == {"bfloat16"}


@pytest.mark.slow
def test_export_of_params_sharded_across_processes(tmp_path):
  """2 processes x 2 CPU devices: no process can address a whole parameter."""
  for i, (status, out) in enumerate(cpu_process.run_two("hf_export_worker.py",
                                                       str(tmp_path / "multi"))):
    assert status == 0 and f"process {i} done" in out, out[-4000:]
  cfg, params = tiny_export_params(model_lib)
  hf_io.save_hf_llava(cfg, params, tmp_path / "host")
  _assert_same_export(tmp_path / "multi", tmp_path / "host")
