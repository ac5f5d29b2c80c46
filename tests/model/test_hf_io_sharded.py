"""HF checkpoint import straight into shardings (`hf_io.load_hf_llava_sharded`): the values
of `load_hf_llava` on any mesh and name layout, per-process reads, errors before reading."""

from __future__ import annotations

import json
import pathlib
import re

import jax
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from jax.sharding import NamedSharding, SingleDeviceSharding

from rlhfv_jax import model as model_lib
from rlhfv_jax.model import hf_io, lora
from rlhfv_jax.stages import defaults
from rlhfv_jax.stages import model_init
from rlhfv_jax.train import mesh as mesh_lib

from . import cpu_process
from . import hf_reference as ref
from . import test_hf_io
from .hf_export_worker import fsdp_spec
from .hf_load_worker import ReadCounter

torch = ref.torch

# Tensor-name layouts (besides transformers 5's `vision_tower.*`, what the fixture writes).
RENAMES = dict(transformers5=lambda k: k, **test_hf_io.NAME_LAYOUTS)


def _all_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  out = {}
  for f in sorted(path.glob("*.safetensors")):
    out.update(safetensors.numpy.load_file(f))
  return out


def _reshard(src: pathlib.Path, dst: pathlib.Path, num_files: int, rename=lambda k: k):
  """`src`'s tensors renamed and spread over `num_files` files with an index."""
  dst.mkdir()
  tensors = {rename(k): v for k, v in _all_tensors(src).items()}
  names = sorted(tensors)
  weight_map = {}
  for i, part in enumerate(np.array_split(np.array(names, dtype=object), num_files)):
    file_name = f"model-{i + 1:05d}-of-{num_files:05d}.safetensors"
    safetensors.numpy.save_file({k: tensors[k] for k in part}, dst / file_name,
                                metadata={"format": "pt"})
    weight_map.update({k: file_name for k in part})
  (dst / hf_io.SAFETENSORS_INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}))
  (dst / "config.json").write_text((src / "config.json").read_text())
  return dst


def _shardings(kind: str, cfg):
  shapes = model_lib.param_shapes(cfg)
  if kind == "fsdp4":  # the training stage's FSDP over all 4 devices
    return mesh_lib.fsdp_shardings(mesh_lib.make_mesh(1, 4), shapes)
  if kind == "data2_fsdp2":  # first divisible axis: the text layer stacks split by layer
    mesh = mesh_lib.make_mesh(2, 2)
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, 2)), shapes)
  if kind == "one_device":
    return SingleDeviceSharding(jax.devices()[1])
  return None  # replicated on every device


def _assert_equal(got, want, shardings=None):
  """`got` (jax.Arrays) has `want`'s values and dtypes, and `shardings` (a pytree, one
  Sharding for all, or None: replicated on every device)."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  leaves = jax.tree.leaves(got)
  if shardings is None or isinstance(shardings, jax.sharding.Sharding):
    shardings = [shardings] * len(leaves)
  for x, y, sharding in zip(leaves, jax.tree.leaves(want), jax.tree.leaves(shardings)):
    assert isinstance(x, jax.Array) and x.dtype == y.dtype
    if sharding is None:
      assert x.is_fully_replicated and len(x.sharding.device_set) == len(jax.devices())
    else:
      assert x.sharding == sharding
    np.testing.assert_array_equal(np.asarray(x), y)


@pytest.fixture
def sharded_checkpoint(hf_checkpoint):
  """A tiny multi-file checkpoint as transformers writes it (max_shard_size)."""
  _, path = hf_checkpoint(seed=1, max_shard_size="40KB")
  index = json.loads((path / hf_io.SAFETENSORS_INDEX_FILE).read_text())
  assert len(set(index["weight_map"].values())) > 2
  return path


@pytest.mark.parametrize("kind", ["fsdp4", "data2_fsdp2", "one_device", "replicated"])
def test_sharded_load_equals_host_load(sharded_checkpoint, kind, monkeypatch):
  cfg, want = hf_io.load_hf_llava(sharded_checkpoint)
  shardings = _shardings(kind, cfg)
  counter = ReadCounter(safetensors.safe_open)
  monkeypatch.setattr(safetensors, "safe_open", counter)
  got_cfg, got = hf_io.load_hf_llava_sharded(sharded_checkpoint, shardings)
  assert got_cfg == cfg
  _assert_equal(got, want, shardings)
  if kind == "fsdp4":  # Linear kernels [in, out] sharded over out (torch rows) and in
    specs = {tuple(x.sharding.spec) for path, x in jax.tree_util.tree_leaves_with_path(got)
             if path[-1].key == "kernel" and x.ndim == 2}
    assert {(None, "fsdp"), ("fsdp", None)} <= specs
  # Each element read once: a replica is copied between devices, not read again.
  assert counter.elements == sum(x.size for x in jax.tree.leaves(want))


@pytest.mark.parametrize("layout", ["hub", "module_paths"])
def test_name_layouts_of_multi_file_checkpoints(sharded_checkpoint, tmp_path, layout):
  resharded = _reshard(sharded_checkpoint, tmp_path / layout, 3, RENAMES[layout])
  cfg, want = hf_io.load_hf_llava(sharded_checkpoint)
  shardings = _shardings("fsdp4", cfg)
  _assert_equal(hf_io.load_hf_llava_sharded(resharded, shardings)[1], want, shardings)
  _assert_equal(hf_io.load_hf_llava(resharded)[1], want)


@pytest.mark.parametrize("file_dtype", ["float32", "bfloat16"])
def test_dtype_converted_per_slice(hf_checkpoint, tmp_path, file_dtype):
  torch_model, _ = hf_checkpoint(seed=2)
  path = tmp_path / file_dtype
  torch_model.to(getattr(torch, file_dtype)).save_pretrained(path, max_shard_size="40KB")
  cfg, _ = hf_io.load_hf_llava(path)
  for kind in ("fsdp4", "data2_fsdp2"):
    shardings = _shardings(kind, cfg)
    for dtype in ("float32", "bfloat16"):
      _, want = hf_io.load_hf_llava(path, param_dtype=dtype)
      _, got = hf_io.load_hf_llava_sharded(path, shardings, param_dtype=dtype)
      _assert_equal(got, want, shardings)
      assert {x.dtype for x in jax.tree.leaves(got)} == {np.dtype(dtype)}


def _forbid_reading(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("a tensor was read before the checks")
  monkeypatch.setattr(safetensors, "safe_open", refuse)


LOADERS = {"host": lambda path: hf_io.load_hf_llava(path),
           "sharded": lambda path: hf_io.load_hf_llava_sharded(path)}


@pytest.mark.parametrize("loader", LOADERS)
def test_missing_shard_is_named_before_reading(sharded_checkpoint, loader, monkeypatch):
  shard = sorted(sharded_checkpoint.glob("*.safetensors"))[1]
  shard.unlink()
  _forbid_reading(monkeypatch)
  with pytest.raises(FileNotFoundError, match=f"do not exist.*{re.escape(shard.name)}"):
    LOADERS[loader](sharded_checkpoint)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("keep", ["most", "header_part", "4_bytes"])
def test_truncated_shard_is_named_before_reading(sharded_checkpoint, loader, keep,
                                                 monkeypatch):
  shard = sorted(sharded_checkpoint.glob("*.safetensors"))[-1]
  data = shard.read_bytes()
  shard.write_bytes(data[:{"most": len(data) - 100, "header_part": 20, "4_bytes": 4}[keep]])
  _forbid_reading(monkeypatch)
  with pytest.raises(ValueError, match=f"{re.escape(str(shard))}: truncated"):
    LOADERS[loader](sharded_checkpoint)


def test_wrong_tensor_shape_is_named_before_reading(sharded_checkpoint, tmp_path,
                                                    monkeypatch):
  tensors = _all_tensors(sharded_checkpoint)
  name, = (k for k in tensors if k.endswith("language_model.layers.1.mlp.up_proj.weight")
           or k.endswith("language_model.model.layers.1.mlp.up_proj.weight"))
  tensors[name] = np.zeros((5, 64), np.float32)
  (tmp_path / "bad").mkdir()
  safetensors.numpy.save_file(tensors, tmp_path / "bad" / hf_io.SAFETENSORS_FILE)
  (tmp_path / "bad" / "config.json").write_text((sharded_checkpoint / "config.json").read_text())
  _forbid_reading(monkeypatch)
  with pytest.raises(ValueError, match=r"layers\.1\.mlp\.up_proj\.weight .*shape \(5, 64\).*"
                                       r"language_model/layers/mlp/up_proj/kernel"):
    hf_io.load_hf_llava_sharded(tmp_path / "bad")


def test_shardings_must_match_the_param_tree(sharded_checkpoint, monkeypatch):
  _forbid_reading(monkeypatch)
  with pytest.raises(ValueError, match="shardings do not match"):
    hf_io.load_hf_llava_sharded(sharded_checkpoint, {"language_model": None})


def _hf_init_config(path, model_from_checkpoint=True):
  config = defaults.base_config("sft", "tiny")
  config.init.update(params="hf", hf_checkpoint=str(path),
                     model_from_checkpoint=model_from_checkpoint)
  return model_init.resolve_model_config(config)


def test_initial_params_land_in_the_target_shardings(sharded_checkpoint):
  config = _hf_init_config(sharded_checkpoint)
  shardings = _shardings("fsdp4", lora.base_config(config.model))
  params = model_init.load_initial_params(config, shardings)
  _, want = hf_io.load_hf_llava(sharded_checkpoint, param_dtype=config.model.param_dtype)
  _assert_equal(params, want, shardings)
  # Without target shardings: host arrays, as before.
  host = model_init.load_initial_params(config)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host))


def test_initial_params_shape_mismatch_before_reading(sharded_checkpoint, monkeypatch):
  config = _hf_init_config(sharded_checkpoint, model_from_checkpoint=False)  # "tiny"
  shardings = _shardings("fsdp4", lora.base_config(config.model))
  _forbid_reading(monkeypatch)
  with pytest.raises(ValueError, match="init.hf_checkpoint=.*does not match config.model"):
    model_init.load_initial_params(config, shardings)


@pytest.mark.slow
def test_sharded_load_across_processes(sharded_checkpoint):
  """2 processes x 2 CPU devices, FSDP over the 4: each reads only its devices' slices."""
  for i, (status, out) in enumerate(cpu_process.run_two("hf_load_worker.py",
                                                       str(sharded_checkpoint))):
    assert status == 0 and f"process {i} done" in out, out[-4000:]
