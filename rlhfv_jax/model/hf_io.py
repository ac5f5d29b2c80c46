"""HF multimodal checkpoints <-> Flax parameters, for every model family, without torch.

Reads `config.json` plus `model.safetensors` or a sharded
`model.safetensors.index.json`, through the safetensors NumPy API (bf16 tensors arrive
as `ml_dtypes.bfloat16`). The family comes from config.json's ``model_type`` (loading)
or the model config's ``family`` (saving), through `rlhfv_jax.model.families`; each
family declares its tensor naming as a `Naming` (``FAMILY.hf_naming``).

LLaVA-1.5 (`LlavaForConditionalGeneration`) and Gemma 3
(`Gemma3ForConditionalGeneration`) name their tensors alike. Every variant transformers
4.x / 5.x writes is accepted; names are first normalized to the hub layout (what the
llava-hf and google checkpoints hold, written by transformers 4.4x-4.51):

  language_model.model.{embed_tokens,layers.<i>.*,norm}.weight
  language_model.lm_head.weight                     (absent when tied: Gemma 3)
  multi_modal_projector.*                           (linear_{1,2}.* / mm_input_projection_weight,
                                                     mm_soft_emb_norm.weight)
  vision_tower.vision_model.{embeddings,encoder.layers.<i>,...}.*

Variants: transformers 4.52-4.57 saved its module paths, `model.language_model.*` /
`lm_head.*` / `model.vision_tower.vision_model.*` / `model.multi_modal_projector.*`;
transformers 5 saves `language_model.model.*` again (it reverts its load-time renames)
but `vision_tower.*` without `vision_model.` (its vision towers lost that level).

The mapping is derived from the Flax parameter tree itself (its module names mirror
HF's): a Flax path `a/b/kernel` is HF `a.b.weight` (transposed), `scale` and
`embedding` are `weight`, other leaves keep their name untransposed (Gemma 3's raw
``mm_input_projection_weight`` matrix, used as ``x @ W``), and a leaf under a scanned
`layers` module is the stack of the HF tensors `...layers.<i>...`. A tied LM head's copy
(`lm_head.weight` in an untied save of a tied model) is ignored, as transformers does.

Two loaders share the checks (done on the files' headers, before any tensor is read: a
shard the index names that is missing, a truncated file, missing / unexpected /
duplicated / wrongly shaped tensors):

* `load_hf`: the whole model as host NumPy arrays in `param_dtype` (every process
  holds all of it, plus the file's tensors while it converts: ~1.6x the f32 param bytes
  for a bf16 file; `benchmarks/checkpoint_loading.py`).
* `load_hf_sharded`: each parameter straight into a target sharding; a process
  reads only the slices its own devices hold (safetensors' `get_slice`), one device's
  slice of one parameter at a time, converting the dtype per slice, so its host memory
  peaks at about its devices' share of the params plus one such slice (on CPU devices;
  on accelerators, the slice alone).

`save_hf` writes a checkpoint `from_pretrained` loads. `load_hf_llava`,
`load_hf_llava_sharded` and `save_hf_llava` are the same functions under their older
names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from typing import Any, Iterator, Mapping, Optional

import jax
import ml_collections
import numpy as np
import safetensors
import safetensors.numpy
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from rlhfv_jax.model import apply
from rlhfv_jax.model import families

Params = dict[str, Any]
Rules = tuple[tuple[re.Pattern, str], ...]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
HUB = "hub"  # `save_hf` layout name: a family's hub layout, whatever it is called
LAYOUTS = ("llava-hf", "transformers5")  # LLaVA-1.5's; `layouts(cfg)` for any family

# Non-parameter buffers some exporters include; they carry no weights.
_IGNORED_TENSOR = re.compile(r"(\.position_ids|\.rotary_emb\.inv_freq)$")

# (pattern, replacement) applied in order to bring any variant to the hub layout.
NAME_RULES: Rules = (
    # transformers 4.52-4.57: the model's module paths.
    (re.compile(r"^model\.language_model\."), "language_model.model."),
    (re.compile(r"^lm_head\."), "language_model.lm_head."),
    (re.compile(r"^model\.vision_tower\."), "vision_tower."),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
    # transformers 5: vision towers without `vision_model.` (CLIP, SigLIP).
    (re.compile(r"^vision_tower\.(?!vision_model\.)"), "vision_tower.vision_model."),
    (re.compile(r"^language_model\.(?!model\.|lm_head\.)"), "language_model.model."),
)

# Flax top-level module -> HF prefix in the hub layout.
PREFIX = {
    "vision_tower": "vision_tower.vision_model.",
    "multi_modal_projector": "multi_modal_projector.",
    "language_model": "language_model.model.",
    "lm_head": "language_model.lm_head.",
}
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}

# Hub-layout module path -> the module's path in transformers 5's model (`named_modules()`).
MODULE_RULES: Rules = (
    (re.compile(r"^language_model\.model\."), "model.language_model."),
    (re.compile(r"^language_model\.lm_head$"), "lm_head"),
    (re.compile(r"^vision_tower\.vision_model\."), "model.vision_tower."),
    (re.compile(r"^multi_modal_projector\."), "model.multi_modal_projector."),
)

# Export layouts: hub names -> the layout's names.
TRANSFORMERS5_LAYOUT: Rules = ((re.compile(r"^vision_tower\.vision_model\."), "vision_tower."),)

# Flax top-level module -> the config field holding its scanned `layers` count.
LAYER_COUNTS = {"vision_tower": "vision.num_layers", "language_model": "text.num_layers"}


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashable (by identity)
class Naming:
  """How one family's Flax parameter paths map to HF tensor / module names.

  The defaults describe the LLaVA-style layout both registered families share; a family
  states what differs (its leaf names, its layouts).

  Attributes:
    leaf_names: Flax leaf name -> HF leaf name; leaves not named "kernel" are copied
      untransposed.
    layouts: export layout name -> rules rewriting hub names into it. The first is the
      hub layout (no rules); `save_hf` also accepts ``"hub"`` for it.
    prefix: Flax top-level module -> its prefix in the hub layout.
    name_rules: rules normalizing any transformers version's tensor names to the hub
      layout, applied in order.
    module_rules: rules turning a hub module path into transformers 5's module path
      (`named_modules()`, which PEFT's adapter keys use).
    layer_counts: Flax top-level module -> the dotted config field with the number of
      layers of its scanned ``layers`` subtree.
  """

  leaf_names: Mapping[str, str]
  layouts: Mapping[str, Rules]
  prefix: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(PREFIX))
  name_rules: Rules = NAME_RULES
  module_rules: Rules = MODULE_RULES
  layer_counts: Mapping[str, str] = dataclasses.field(
      default_factory=lambda: dict(LAYER_COUNTS))

  def layout(self, name: Optional[str]) -> tuple[str, Rules]:
    """(the layout's name, its rules) for `name` (None or "hub": the hub layout)."""
    hub = next(iter(self.layouts))
    name = hub if name in (None, HUB) else name
    if name not in self.layouts:
      known = tuple(dict.fromkeys((HUB, *self.layouts)))
      raise ValueError(f"layout={name!r}; expected one of {known} ({HUB!r}: {hub!r})")
    return name, self.layouts[name]

  def tied_head(self) -> str:
    """Hub name of the LM head's weight (a tied model has no such parameter)."""
    return self.prefix["lm_head"] + "weight"


def _rewrite(name: str, rules: Rules) -> str:
  for pattern, replacement in rules:
    name = pattern.sub(replacement, name)
  return name


def _default_naming() -> Naming:
  return families.get(families.DEFAULT).hf_naming


def naming_of(cfg: ml_collections.ConfigDict) -> Naming:
  """The HF naming of `cfg`'s family."""
  return families.family_of(cfg).hf_naming


def layouts(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The export layouts `save_hf` writes for `cfg`'s family (the first: its hub layout)."""
  return tuple(naming_of(cfg).layouts)


def normalize_name(name: str, naming: Optional[Naming] = None) -> str:
  """Maps any transformers 4.x/5.x tensor name to the hub layout (of `naming`; the
  registered families share one)."""
  return _rewrite(name, (naming or _default_naming()).name_rules)


def _hf_names(path: tuple[str, ...], num_layers: int | None,
              naming: Optional[Naming] = None) -> list[str]:
  """HF hub names of the Flax leaf at `path` (one per layer for scanned leaves)."""
  naming = naming or _default_naming()
  *modules, leaf = path
  base = naming.prefix[modules[0]] + ".".join(modules[1:] + [naming.leaf_names[leaf]])
  if "layers" not in modules:
    return [base]
  head, tail = base.split(".layers.", 1)
  return [f"{head}.layers.{i}.{tail}" for i in range(num_layers)]


def _layer_count(cfg: ml_collections.ConfigDict, path: tuple[str, ...]) -> int | None:
  if "layers" not in path:
    return None
  value = cfg
  for key in naming_of(cfg).layer_counts[path[0]].split("."):
    value = value[key]
  return int(value)


def _names(cfg: ml_collections.ConfigDict, path: tuple[str, ...]) -> list[str]:
  """`_hf_names` of a leaf of `cfg`'s parameter tree."""
  return _hf_names(path, _layer_count(cfg, path), naming_of(cfg))


def module_names(cfg: ml_collections.ConfigDict, path: tuple[str, ...]) -> list[str]:
  """Paths in transformers 5's model of the Flax module `path` of `cfg`'s family.

  E.g. ``("language_model", "layers", "self_attn", "q_proj")`` ->
  ``["model.language_model.layers.0.self_attn.q_proj", ...]``, one per layer under a
  scanned ``layers``. These are the names `named_modules()` gives (transformers >= 4.52
  for the language model), which PEFT's adapter keys and ``target_modules`` use;
  ``normalize_name(name + ".weight")`` is the hub name of the module's weight.
  """
  naming = naming_of(cfg)
  return [_rewrite(name.removesuffix(".weight"), naming.module_rules)
          for name in _names(cfg, (*path, "kernel"))]


def _flax_axes(leaf: str, ndim: int) -> tuple[int, ...]:
  """`axes` with Flax layout = torch layout `.transpose(axes)`: Flax axis k is torch's
  axis `axes[k]`."""
  if leaf == "kernel" and ndim == 2:
    return (1, 0)  # torch Linear is [out, in].
  if leaf == "kernel" and ndim == 4:
    return (2, 3, 1, 0)  # torch Conv2d [out, in, kh, kw] -> [kh, kw, in, out].
  return tuple(range(ndim))


def _to_flax(leaf: str, array: np.ndarray) -> np.ndarray:
  """One HF (torch-layout) tensor in Flax layout."""
  return array.transpose(_flax_axes(leaf, array.ndim))


def _to_hf(leaf: str, array: np.ndarray) -> np.ndarray:
  """One Flax leaf in HF (torch) layout: the inverse of `_to_flax`."""
  return array.transpose(np.argsort(_flax_axes(leaf, array.ndim)))


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


def _read_header(file_name: str) -> dict[str, dict[str, Any]]:
  """A safetensors file's header (tensor name -> dtype, shape, data_offsets), read without
  its data and checked against the file's size.

  Raises:
    ValueError: the file is truncated (e.g. an interrupted download or copy; safetensors
      itself would fail on it later without naming the file) or has no valid header.
  """
  size = os.path.getsize(file_name)
  with open(file_name, "rb") as f:
    prefix = f.read(8)
    length = int.from_bytes(prefix, "little")
    if len(prefix) < 8 or 8 + length > size:
      raise ValueError(f"{file_name}: truncated or not a safetensors file: {size} bytes, "
                       "fewer than its header needs")
    try:
      header = json.loads(f.read(length))
      header.pop("__metadata__", None)
      header = {name: dict(t, shape=tuple(int(n) for n in t["shape"]))
                for name, t in header.items()}
      end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
      raise ValueError(f"{file_name}: not a safetensors file (bad header: {e!r})") from e
  if 8 + length + end > size:
    raise ValueError(f"{file_name}: truncated: its header describes {8 + length + end} bytes, "
                     f"the file has {size} (an interrupted download or copy?)")
  return header


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """Where one HF tensor is: its file, its name there and its (torch-layout) shape."""
  file: str
  name: str
  shape: tuple[int, ...]


def _plan(path: str, cfg: ml_collections.ConfigDict
          ) -> tuple[Params, dict[tuple[str, ...], list[_Tensor]]]:
  """(the expected param shapes of `cfg`, Flax leaf path -> its HF tensors, one per layer
  for a scanned leaf), from the files' headers alone: every check happens before a
  tensor is read.

  Raises:
    FileNotFoundError: no weights, or shard files the index names are missing (named).
    ValueError: a truncated file; missing, unexpected, duplicated or wrongly shaped
      tensors (named).
  """
  expected = apply.param_shapes(cfg)
  naming = naming_of(cfg)
  source: dict[str, _Tensor] = {}  # hub name -> where it is
  for file_name in _tensor_files(path):
    for name, info in _read_header(file_name).items():
      if _IGNORED_TENSOR.search(name):
        continue
      hub_name = normalize_name(name, naming)
      if hub_name in source:
        raise ValueError(f"{path}: tensor {name!r} ({file_name}) duplicates "
                         f"{source[hub_name].name!r} (both are {hub_name!r})")
      source[hub_name] = _Tensor(file_name, name, info["shape"])
  unused = set(source)
  head = source.get(naming.tied_head())
  if cfg.text.tie_word_embeddings and head is not None:
    # A tied model's saved head is a copy of the embedding, not a parameter: transformers
    # ignores it when tying; its shape must still be the embedding's.
    want = (cfg.text.vocab_size, cfg.text.hidden_size)
    if head.shape != want:
      raise ValueError(f"{path}: tensor {head.name} ({os.path.basename(head.file)}) has shape "
                       f"{head.shape}; the tied LM head must be the embedding's {want}")
    unused.discard(naming.tied_head())

  plan, missing = {}, []
  for leaf_path, shape in _leaves(expected):
    names = _names(cfg, leaf_path)
    absent = [n for n in names if n not in source]
    if absent:
      missing += absent
      continue
    want = shape.shape[1:] if "layers" in leaf_path else shape.shape  # per HF tensor
    for name in names:
      tensor = source[name]
      axes = _flax_axes(leaf_path[-1], len(tensor.shape))
      got = tuple(tensor.shape[a] for a in axes)
      if got != want:
        raise ValueError(f"{path}: tensor {tensor.name} ({os.path.basename(tensor.file)}) has "
                         f"shape {tensor.shape} (Flax layout {got}) for Flax parameter "
                         f"{'/'.join(leaf_path)}, expected {want} per tensor")
    plan[leaf_path] = [source[n] for n in names]
    unused.difference_update(names)
  if missing:
    raise ValueError(f"{path}: {len(missing)} tensors missing from the checkpoint, "
                     f"e.g. {missing[:5]}")
  if unused:
    raise ValueError(f"{path}: {len(unused)} tensors the model does not use, "
                     f"e.g. {sorted(unused)[:5]}")
  return expected, plan


def _unflatten(flat: dict[tuple[str, ...], Any]) -> Params:
  params: Params = {}
  for leaf_path, value in flat.items():
    node = params
    for key in leaf_path[:-1]:
      node = node.setdefault(key, {})
    node[leaf_path[-1]] = value
  return params


def _config(path: str, param_dtype: str) -> ml_collections.ConfigDict:
  """The model config of the checkpoint at `path`, of the family its model_type names."""
  cfg = families.for_hf(path).config_from_hf(path)
  cfg.param_dtype = param_dtype
  return cfg


def load_hf(path: str | os.PathLike, *, param_dtype: str = "float32"
            ) -> tuple[ml_collections.ConfigDict, Params]:
  """Loads a HF checkpoint directory of any registered family into Flax.

  The family comes from config.json's ``model_type`` (`families.for_hf`). The whole
  model lands in this process's host memory (with the files' tensors while it
  converts); `load_hf_sharded` puts it straight onto devices instead.

  Args:
    path: directory with config.json and model.safetensors (or a sharded index).
    param_dtype: dtype of the returned parameters (the file's dtype is converted).

  Returns:
    (model config with `param_dtype` set, parameter pytree of host NumPy arrays: the
    caller places them, e.g. `jax.device_put(params, shardings)`, so a model larger
    than one accelerator never lands on a single device first).

  Raises:
    FileNotFoundError: missing config or weights (a shard the index names, named).
    ValueError: a model_type of no registered family (the supported ones named); a
      truncated file; missing, unexpected, duplicated or wrongly shaped tensors (named).
      Raised before any tensor is read.
    NotImplementedError: a variant of the family this model does not implement.
  """
  path = os.fspath(path)
  cfg = _config(path, param_dtype)
  expected, plan = _plan(path, cfg)
  with contextlib.ExitStack() as stack:
    handles: dict[str, Any] = {}

    def read(tensor: _Tensor) -> np.ndarray:
      if tensor.file not in handles:
        handles[tensor.file] = stack.enter_context(
            safetensors.safe_open(tensor.file, framework="np"))
      return handles[tensor.file].get_tensor(tensor.name)

    flat = {}
    for leaf_path, shape in _leaves(expected):
      arrays = [_to_flax(leaf_path[-1], read(t)) for t in plan[leaf_path]]
      array = np.stack(arrays) if "layers" in leaf_path else arrays[0]
      flat[leaf_path] = np.ascontiguousarray(array.astype(shape.dtype))
  return cfg, _unflatten(flat)


def _read_tensor_slice(tensor: _Tensor, leaf: str, index: tuple[slice, ...]) -> np.ndarray:
  """`index` (Flax layout) of one HF tensor, in its file's dtype, reading only that slice.

  The file is opened (memory-mapped) for this slice alone: the pages a slice touches (all
  of the tensor's, for a slice across torch's rows) leave this process's RSS when it
  closes, instead of adding up to the whole file.
  """
  axes = _flax_axes(leaf, len(tensor.shape))
  torch_index = [slice(None)] * len(axes)
  for flax_axis, part in enumerate(index):
    torch_index[axes[flax_axis]] = part
  with safetensors.safe_open(tensor.file, framework="np") as f:
    data = f.get_slice(tensor.name)[tuple(torch_index)]
  return data.transpose(axes)


def _read_slice(tensors: list[_Tensor], leaf_path: tuple[str, ...], shape: Any,
                index: tuple[slice, ...]) -> np.ndarray:
  """`index` of the Flax parameter at `leaf_path` (of `shape`: its ShapeDtypeStruct),
  assembled from its HF tensors' slices and converted to its dtype slice by slice."""
  leaf = leaf_path[-1]
  if "layers" not in leaf_path:
    return np.ascontiguousarray(_read_tensor_slice(tensors[0], leaf, index), shape.dtype)
  # A scanned stack [L, ...]: the layers in the index's range, each its own HF tensor.
  layers = range(shape.shape[0])[index[0]]
  out = np.empty([len(layers)] + [len(range(n)[s]) for n, s in zip(shape.shape[1:], index[1:])],
                 shape.dtype)
  for i, layer in enumerate(layers):
    out[i] = _read_tensor_slice(tensors[layer], leaf, index[1:])  # converts the dtype
  return out


def _sharded_param(tensors: list[_Tensor], leaf_path: tuple[str, ...], shape: Any,
                   sharding: Sharding) -> jax.Array:
  """One parameter as a `jax.Array` of `sharding`, built one addressable device at a time.

  Not `jax.make_array_from_callback`: that reads every local device's slice before it
  copies any of them to a device, so a process would hold its whole share of the largest
  parameter (a scanned layer stack) in host memory twice over.
  """
  placed: dict[tuple, jax.Array] = {}  # slice -> its first device's copy
  arrays = []
  ndim = len(shape.shape)
  for device, index in sharding.addressable_devices_indices_map(shape.shape).items():
    index = tuple(index) + (slice(None),) * (ndim - len(index))
    key = tuple(s.indices(n) for s, n in zip(index, shape.shape))
    if key in placed:  # a replica: copied from the device that has it, not read again
      arrays.append(jax.device_put(placed[key], device))
      continue
    placed[key] = jax.device_put(_read_slice(tensors, leaf_path, shape, index), device)
    placed[key].block_until_ready()  # its host slice is freed before the next one is read
    arrays.append(placed[key])
  return jax.make_array_from_single_device_arrays(shape.shape, sharding, arrays)


def load_hf_sharded(path: str | os.PathLike, shardings: Any = None, *,
                    param_dtype: str = "float32"
                    ) -> tuple[ml_collections.ConfigDict, Params]:
  """Loads a HF checkpoint directory (any registered family) straight into sharded
  `jax.Array`s.

  Each process reads, per parameter and per addressable device, only the slice that
  device holds (a scanned layer stack: the layers of its range, each from its own HF
  tensor; a Linear kernel's slice is the transposed slice of the torch weight), converts
  it to `param_dtype` and copies it to the device before reading the next. Nothing else
  of the model is held on the host. Same checks, same values as `load_hf`. In a
  multi-process run every process calls it with the same arguments (no collectives).

  Args:
    path: directory with config.json and model.safetensors (or a sharded index).
    shardings: the params' shardings: a pytree of `jax.sharding.Sharding` with the param
      tree's structure (e.g. `mesh.fsdp_shardings`), one Sharding for every param, or
      None: replicated on every (global) device.
    param_dtype: dtype of the returned parameters (the file's dtype is converted).

  Returns:
    (model config with `param_dtype` set, parameter pytree of `jax.Array`s).

  Raises:
    FileNotFoundError: missing config or weights (a shard the index names, named).
    ValueError: a truncated file; missing, unexpected, duplicated or wrongly shaped
      tensors (named); `shardings` not of the param tree's structure. All raised before
      any tensor is read.
  """
  path = os.fspath(path)
  cfg = _config(path, param_dtype)
  expected, plan = _plan(path, cfg)
  if shardings is None:
    shardings = NamedSharding(Mesh(np.array(jax.devices()), ("devices",)), PartitionSpec())
  if isinstance(shardings, Sharding):
    shardings = jax.tree.map(lambda _: shardings, expected)
  try:
    flat_shardings = jax.tree.structure(expected).flatten_up_to(shardings)
  except (ValueError, TypeError) as e:
    raise ValueError(f"shardings do not match the parameter tree of {path}: {e}") from e
  flat = {}
  for (leaf_path, shape), sharding in zip(_leaves(expected), flat_shardings):
    flat[leaf_path] = _sharded_param(plan[leaf_path], leaf_path, shape, sharding)
  return cfg, _unflatten(flat)


def _host_value(value: Any) -> np.ndarray:
  """The whole value of one parameter as a host array, wherever its shards live.

  An array spread over several processes (FSDP across hosts) cannot be read by one
  process alone: `process_allgather` is a collective that every process must enter.
  """
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
  return np.asarray(jax.device_get(value))


def save_hf(cfg: ml_collections.ConfigDict, params: Params, path: str | os.PathLike, *,
            layout: Optional[str] = None) -> None:
  """Writes config.json + model.safetensors that the family's transformers class
  (`LlavaForConditionalGeneration`, `Gemma3ForConditionalGeneration`) loads.

  `params` may be host arrays or `jax.Array`s of any sharding, including arrays sharded
  over several processes. In a multi-process run every process must call this (each
  parameter is gathered with a collective, one at a time, so host memory holds the
  full tensors once); only process 0 writes, and all return once the files exist.

  Args:
    cfg: the model config.
    params: parameter pytree of the family's module (`apply.module(cfg)`); tensors keep
      their dtype.
    path: output directory (created if needed), on storage process 0 can write.
    layout: one of `layouts(cfg)`. The first, also called "hub" and the default, is
      the hub layout (LLaVA's "llava-hf"; `vision_tower.vision_model.*`; loads in
      transformers 4.x and 5.x); "transformers5" is what transformers 5's
      `save_pretrained` writes (`vision_tower.*`).
  """
  naming = naming_of(cfg)
  layout, layout_rules = naming.layout(layout)
  path = os.fspath(path)
  writer = jax.process_index() == 0
  tensors: dict[str, np.ndarray] = {}
  dtypes = set()
  for leaf_path, value in _leaves(params):
    names = _names(cfg, leaf_path)
    if "layers" in leaf_path and value.shape[0] != len(names):  # checked by every process
      raise ValueError(f"Parameter {'/'.join(leaf_path)} has {value.shape[0]} layers, "
                       f"config says {len(names)}")
    value = _host_value(value)
    if not writer:
      continue
    dtypes.add(value.dtype.name)
    per_layer = value if "layers" in leaf_path else [value]
    for name, array in zip(names, per_layer):
      tensors[_rewrite(name, layout_rules)] = np.ascontiguousarray(_to_hf(leaf_path[-1], array))
  if writer:
    os.makedirs(path, exist_ok=True)
    hf_config = families.family_of(cfg).to_hf_config(cfg)
    hf_config.dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
    hf_config.save_pretrained(path)
    safetensors.numpy.save_file(tensors, os.path.join(path, SAFETENSORS_FILE),
                                metadata={"format": "pt"})
  if jax.process_count() > 1:  # nobody reads the export before process 0 has written it
    multihost_utils.sync_global_devices(f"save_hf {path}")


# The names of the LLaVA-only days; the same functions.
load_hf_llava = load_hf
load_hf_llava_sharded = load_hf_sharded
save_hf_llava = save_hf
