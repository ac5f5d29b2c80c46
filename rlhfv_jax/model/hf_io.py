"""HF llava-hf checkpoints <-> Flax parameters, without torch.

Reads `config.json` plus `model.safetensors` or a sharded
`model.safetensors.index.json`, through the safetensors NumPy API (bf16 tensors arrive
as `ml_dtypes.bfloat16`). Every tensor-name variant that transformers 4.x / 5.x write
for `LlavaForConditionalGeneration` is accepted; names are first normalized to the
llava-hf hub layout:

  language_model.model.{embed_tokens,layers.<i>.*,norm}.weight
  language_model.lm_head.weight
  multi_modal_projector.linear_{1,2}.{weight,bias}
  vision_tower.vision_model.{embeddings,pre_layrnorm,encoder.layers.<i>,post_layernorm}.*

Variants: `model.language_model.*` / `lm_head.*` / `model.vision_tower.*` /
`model.multi_modal_projector.*` (transformers >= 4.52 module paths) and
`vision_tower.*` without `vision_model.` (transformers 5).

The mapping is derived from the Flax parameter tree itself (its module names mirror
HF's): a Flax path `a/b/kernel` is HF `a.b.weight` (transposed), `scale` and
`embedding` are `weight`, and a leaf under a scanned `layers` module is the stack of
the HF tensors `...layers.<i>...`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import safetensors
import safetensors.numpy
from jax.experimental import multihost_utils

from rlhfv_jax.model import config as config_lib
from rlhfv_jax.model import llava

Params = dict[str, Any]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
LAYOUTS = ("llava-hf", "transformers5")

# Non-parameter buffers some exporters include; they carry no weights.
_IGNORED_TENSOR = re.compile(r"(\.position_ids|\.rotary_emb\.inv_freq)$")

# (pattern, replacement) applied in order to bring any variant to the hub layout.
_NAME_RULES = (
    (re.compile(r"^model\.language_model\."), "language_model.model."),
    (re.compile(r"^lm_head\."), "language_model.lm_head."),
    (re.compile(r"^model\.vision_tower\."), "vision_tower."),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
    (re.compile(r"^vision_tower\.(?!vision_model\.)"), "vision_tower.vision_model."),
    (re.compile(r"^language_model\.(?!model\.|lm_head\.)"), "language_model.model."),
)

# Flax top-level module -> HF prefix in the hub layout.
_PREFIX = {
    "vision_tower": "vision_tower.vision_model.",
    "multi_modal_projector": "multi_modal_projector.",
    "language_model": "language_model.model.",
    "lm_head": "language_model.lm_head.",
}
_LEAF_NAME = {"kernel": "weight", "scale": "weight", "embedding": "weight",
              "bias": "bias", "class_embedding": "class_embedding"}

# Hub-layout module path -> the module's path in transformers 5's model (`named_modules()`).
_MODULE_RULES = (
    (re.compile(r"^language_model\.model\."), "model.language_model."),
    (re.compile(r"^language_model\.lm_head$"), "lm_head"),
    (re.compile(r"^vision_tower\.vision_model\."), "model.vision_tower."),
    (re.compile(r"^multi_modal_projector\."), "model.multi_modal_projector."),
)


def normalize_name(name: str) -> str:
  """Maps any transformers 4.x/5.x llava tensor name to the llava-hf hub layout."""
  for pattern, replacement in _NAME_RULES:
    name = pattern.sub(replacement, name)
  return name


def _to_layout(name: str, layout: str) -> str:
  if layout == "transformers5":
    return name.replace("vision_tower.vision_model.", "vision_tower.", 1)
  return name


def _hf_names(path: tuple[str, ...], num_layers: int | None) -> list[str]:
  """HF hub names of the Flax leaf at `path` (one per layer for scanned leaves)."""
  *modules, leaf = path
  base = _PREFIX[modules[0]] + ".".join(modules[1:] + [_LEAF_NAME[leaf]])
  if "layers" not in modules:
    return [base]
  head, tail = base.split(".layers.", 1)
  return [f"{head}.layers.{i}.{tail}" for i in range(num_layers)]


def module_names(cfg: ml_collections.ConfigDict, path: tuple[str, ...]) -> list[str]:
  """Paths in transformers 5's `LlavaForConditionalGeneration` of the Flax module `path`.

  E.g. ``("language_model", "layers", "self_attn", "q_proj")`` ->
  ``["model.language_model.layers.0.self_attn.q_proj", ...]``, one per layer under a
  scanned ``layers``. These are the names `named_modules()` gives (transformers >= 4.52
  for the language model), which PEFT's adapter keys and ``target_modules`` use;
  ``normalize_name(name + ".weight")`` is the hub name of the module's weight.
  """
  out = []
  for name in _hf_names((*path, "kernel"), _layer_count(cfg, path)):
    name = name.removesuffix(".weight")
    for pattern, replacement in _MODULE_RULES:
      name = pattern.sub(replacement, name)
    out.append(name)
  return out


def _to_flax(leaf: str, array: np.ndarray) -> np.ndarray:
  """One HF (torch-layout) tensor in Flax layout."""
  if leaf == "kernel" and array.ndim == 2:
    return array.T  # torch Linear is [out, in].
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)  # torch Conv2d [out, in, kh, kw] -> [kh, kw, in, out].
  return array


def _to_hf(leaf: str, array: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  return array


def _layer_count(cfg: ml_collections.ConfigDict, path: tuple[str, ...]) -> int | None:
  if "layers" not in path:
    return None
  return cfg.vision.num_layers if path[0] == "vision_tower" else cfg.text.num_layers


def _leaves(tree: Params) -> Iterator[tuple[tuple[str, ...], Any]]:
  for key_path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
    yield tuple(k.key for k in key_path), value


def _tensor_files(path: str) -> list[str]:
  """Safetensors files of a checkpoint directory (sharded index or single file)."""
  index_path = os.path.join(path, SAFETENSORS_INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index_path}: no 'weight_map' of tensor name -> shard file")
    files = sorted({os.path.join(path, shard) for shard in weight_map.values()})
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
      raise FileNotFoundError(f"{index_path} names shard files that do not exist: {missing}")
    return files
  single = os.path.join(path, SAFETENSORS_FILE)
  if os.path.isfile(single):
    return [single]
  raise FileNotFoundError(f"No {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE} in {path}")


def load_hf_llava(path: str | os.PathLike, *, param_dtype: str = "float32"
                  ) -> tuple[ml_collections.ConfigDict, Params]:
  """Loads a HF `LlavaForConditionalGeneration` checkpoint directory into Flax.

  Args:
    path: directory with config.json and model.safetensors (or a sharded index).
    param_dtype: dtype of the returned parameters (the file's dtype is converted).

  Returns:
    (model config with `param_dtype` set, parameter pytree of host NumPy arrays: the
    caller places them, e.g. `jax.device_put(params, shardings)`, so a model larger
    than one accelerator never lands on a single device first).

  Raises:
    FileNotFoundError: missing config or weights.
    ValueError: missing, unexpected, duplicated or wrongly shaped tensors (named).
  """
  path = os.fspath(path)
  cfg = config_lib.config_from_hf(path)
  cfg.param_dtype = param_dtype
  expected = llava.param_shapes(cfg)

  with contextlib.ExitStack() as stack:
    source: dict[str, tuple[Any, str]] = {}  # hub name -> (open file, name in file)
    unused: set[str] = set()
    for file_name in _tensor_files(path):
      handle = stack.enter_context(safetensors.safe_open(file_name, framework="np"))
      for name in handle.keys():
        if _IGNORED_TENSOR.search(name):
          continue
        hub_name = normalize_name(name)
        if hub_name in source:
          raise ValueError(f"{path}: tensor {name!r} ({file_name}) duplicates "
                           f"{source[hub_name][1]!r} (both are {hub_name!r})")
        source[hub_name] = (handle, name)
        unused.add(hub_name)
    if cfg.text.tie_word_embeddings:
      unused.discard("language_model.lm_head.weight")  # Tied copy, not a parameter.

    flat, missing = {}, []
    for leaf_path, shape in _leaves(expected):
      names = _hf_names(leaf_path, _layer_count(cfg, leaf_path))
      absent = [n for n in names if n not in source]
      if absent:
        missing += absent
        continue
      arrays = [_to_flax(leaf_path[-1], source[n][0].get_tensor(source[n][1])) for n in names]
      array = np.stack(arrays) if "layers" in leaf_path else arrays[0]
      if array.shape != shape.shape:
        raise ValueError(f"{path}: tensor(s) {names[0]}... give shape {array.shape} for "
                         f"Flax parameter {'/'.join(leaf_path)}, expected {shape.shape}")
      flat[leaf_path] = np.ascontiguousarray(array.astype(shape.dtype))
      unused.difference_update(names)
  if missing:
    raise ValueError(f"{path}: {len(missing)} tensors missing from the checkpoint, "
                     f"e.g. {missing[:5]}")
  if unused:
    raise ValueError(f"{path}: {len(unused)} tensors the model does not use, "
                     f"e.g. {sorted(unused)[:5]}")
  params: Params = {}
  for leaf_path, value in flat.items():
    node = params
    for key in leaf_path[:-1]:
      node = node.setdefault(key, {})
    node[leaf_path[-1]] = value
  return cfg, params


def _host_value(value: Any) -> np.ndarray:
  """The whole value of one parameter as a host array, wherever its shards live.

  An array spread over several processes (FSDP across hosts) cannot be read by one
  process alone: `process_allgather` is a collective that every process must enter.
  """
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
  return np.asarray(jax.device_get(value))


def save_hf_llava(cfg: ml_collections.ConfigDict, params: Params,
                  path: str | os.PathLike, *, layout: str = "llava-hf") -> None:
  """Writes config.json + model.safetensors loadable by `LlavaForConditionalGeneration`.

  `params` may be host arrays or `jax.Array`s of any sharding, including arrays sharded
  over several processes. In a multi-process run every process must call this (each
  parameter is gathered with a collective, one at a time, so host memory holds the
  full tensors once); only process 0 writes, and all return once the files exist.

  Args:
    cfg: the model config.
    params: parameter pytree of `Llava(cfg)`; tensors keep their dtype.
    path: output directory (created if needed), on storage process 0 can write.
    layout: "llava-hf" (hub names, `vision_tower.vision_model.*`; loads in
      transformers 4.x and 5.x) or "transformers5" (what transformers 5's
      `save_pretrained` writes: `vision_tower.*`).
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")
  path = os.fspath(path)
  writer = jax.process_index() == 0
  tensors: dict[str, np.ndarray] = {}
  dtypes = set()
  for leaf_path, value in _leaves(params):
    names = _hf_names(leaf_path, _layer_count(cfg, leaf_path))
    if "layers" in leaf_path and value.shape[0] != len(names):  # checked by every process
      raise ValueError(f"Parameter {'/'.join(leaf_path)} has {value.shape[0]} layers, "
                       f"config says {len(names)}")
    value = _host_value(value)
    if not writer:
      continue
    dtypes.add(value.dtype.name)
    per_layer = value if "layers" in leaf_path else [value]
    for name, array in zip(names, per_layer):
      tensors[_to_layout(name, layout)] = np.ascontiguousarray(_to_hf(leaf_path[-1], array))
  if writer:
    os.makedirs(path, exist_ok=True)
    hf_config = config_lib.to_hf_config(cfg)
    hf_config.dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
    hf_config.save_pretrained(path)
    safetensors.numpy.save_file(tensors, os.path.join(path, SAFETENSORS_FILE),
                                metadata={"format": "pt"})
  if jax.process_count() > 1:  # nobody reads the export before process 0 has written it
    multihost_utils.sync_global_devices(f"save_hf_llava {path}")
