"""LoRA adapters <-> PEFT's adapter directory, without torch.

The directory `save_peft_adapter` writes is what ``peft.PeftModel.save_pretrained``
writes for a LoRA `LlavaForConditionalGeneration`, so in PyTorch

  model = LlavaForConditionalGeneration.from_pretrained(base_dir)  # `hf_io.save_hf_llava`
  model = PeftModel.from_pretrained(model, adapter_dir)

runs the policy ``lora.merge(base, adapters)``. It holds two files:

  adapter_config.json: {"peft_type": "LORA", "r": r, "lora_alpha": alpha,
    "target_modules": <regex>, "lora_dropout": 0.0, "bias": "none",
    "fan_in_fan_out": false, "inference_mode": true, "task_type": null, ...}
  adapter_model.safetensors, per adapted projection and layer i:
    base_model.model.model.language_model.layers.<i>.self_attn.q_proj.lora_A.weight [r, in]
    base_model.model.model.language_model.layers.<i>.self_attn.q_proj.lora_B.weight [out, r]

Keys are PEFT's wrapper prefix ``base_model.model.`` plus the module's path in
transformers' model (`hf_io.module_names`: the transformers >= 4.52 layout). A and B are
stored as torch Linear weights ([out, in]): the transposes of the Flax ``lora_a``
[in, r] and ``lora_b`` [r, out], one tensor per layer of the scanned stack. PEFT's
W + (lora_alpha / r) B A is `lora`'s W + (alpha / r) A B.

``target_modules`` is a regex, which PEFT full-matches against module paths: a list of
names (``["q_proj", ...]``) would also adapt CLIP's q_proj / k_proj / v_proj, while
`lora` adapts the language model only.

`load_peft_adapter` also reads keys in the older ``language_model.model.*`` layout
(`hf_io.normalize_name`) and checks the adapter against the model: plain LoRA only (no
DoRA, rsLoRA, bias, per-module ranks, ...), its rank, alpha and target modules those of
``model.lora``, every tensor present and shaped for the base.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
import safetensors
import safetensors.numpy
from jax.experimental import multihost_utils

from rlhfv_jax.model import hf_io
from rlhfv_jax.model import lora

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"

_WRAPPER_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<tensor>lora_A|lora_B)\.weight$")

# PEFT options that change what the weights mean (or add weights): off, or not loadable.
_UNSUPPORTED = ("use_dora", "use_rslora", "use_qalora", "use_bdlora", "lora_bias",
                "fan_in_fan_out", "rank_pattern", "alpha_pattern", "layers_to_transform",
                "layer_replication", "modules_to_save", "trainable_token_indices",
                "target_parameters", "alora_invocation_tokens", "arrow_config")

Params = dict[str, Any]


def _settings(model_cfg: Any) -> ml_collections.ConfigDict:
  s = lora.settings(model_cfg)
  if s is None:
    raise ValueError("model.lora.rank=0: LoRA is off, the model has no adapters")
  problems = lora.problems(model_cfg)
  if problems:
    raise ValueError("; ".join(problems))
  return s


def _adapted(tree: Params, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Params]]:
  """(module path, module dict) of every module of `tree` holding LoRA adapters."""
  if "lora_a" in tree or "lora_b" in tree:
    return [(path, tree)]
  return [found for key, value in tree.items() if isinstance(value, dict)
          for found in _adapted(value, path + (key,))]


def _hub(module: str) -> str:
  """The module path in the llava-hf hub layout, whatever transformers layout it is in."""
  return hf_io.normalize_name(module + ".weight").removesuffix(".weight")


def _target_regex(modules: list[str]) -> str:
  """A regex full-matching exactly `modules` at any layer index.

  Built from the module paths themselves, e.g.
  ``model\\.language_model\\.layers\\.\\d+\\.(?:mlp\\.down_proj|self_attn\\.q_proj)``.
  """
  def parts(name: str) -> list[str]:
    split = name.split(".")
    return [r"\d+" if p.isdigit() and i and split[i - 1] == "layers" else re.escape(p)
            for i, p in enumerate(split)]

  patterns = sorted({tuple(parts(m)) for m in modules})
  common = 0
  while all(len(p) > common + 1 and p[common] == patterns[0][common] for p in patterns):
    common += 1
  head = r"\.".join(patterns[0][:common])
  tails = "|".join(r"\.".join(p[common:]) for p in patterns)
  return f"{head}\\.(?:{tails})" if head else f"(?:{tails})"


def save_peft_adapter(model_cfg: ml_collections.ConfigDict, adapters: Params,
                      directory: str | os.PathLike, base_model_name_or_path: str = "") -> None:
  """Writes `adapters` as a PEFT LoRA adapter directory (see the module docstring).

  Only the adapters are written: modules ``model.lora.trained`` names (trained in full)
  are not part of a PEFT LoRA adapter here; export them with the base
  (`hf_io.save_hf_llava`). Like `hf_io.save_hf_llava`, every process of a multi-process
  run must call this; process 0 writes.

  Args:
    model_cfg: the model config, LoRA on (``model.lora.rank > 0``).
    adapters: a tree holding the ``lora_a`` [L, in, r] / ``lora_b`` [L, r, out] leaves,
      e.g. ``lora.split(params)[1]`` or the trainable tree (other leaves are ignored);
      host or device arrays of any sharding. Tensors keep their dtype.
    directory: output directory (created if needed).
    base_model_name_or_path: recorded in adapter_config.json (PEFT's
      `AutoPeftModel` loads the base from it).

  Raises:
    ValueError: LoRA off, or adapters that do not fit ``model.lora`` (rank, targets,
      layers).
  """
  s = _settings(model_cfg)
  rank = int(s.rank)
  found = _adapted(adapters)
  if not found:
    raise ValueError("No lora_a / lora_b leaves in the adapters tree")
  names = set()
  tensors_by_module = []
  for path, module in found:
    where = "/".join(path)
    if not path or path[0] != lora.SCOPE or path[-1] not in s.targets:
      raise ValueError(f"Adapters at {where}: model.lora.targets={tuple(s.targets)} adapt "
                       f"only {lora.SCOPE}/.../{{{', '.join(s.targets)}}}")
    if set(module) & set(lora.ADAPTERS) != set(lora.ADAPTERS):
      raise ValueError(f"Adapters at {where} have {sorted(set(module) & set(lora.ADAPTERS))}, "
                       f"expected both {lora.ADAPTERS}")
    a, b = module["lora_a"], module["lora_b"]
    if a.shape[-1] != rank or b.shape[-2] != rank:
      raise ValueError(f"Adapters at {where} have rank {a.shape[-1]} (lora_a {a.shape}, "
                       f"lora_b {b.shape}), model.lora.rank={rank}")
    modules = hf_io.module_names(model_cfg, path)
    if "layers" in path and (a.shape[0] != len(modules) or b.shape[0] != len(modules)):
      raise ValueError(f"Adapters at {where} have {a.shape[0]} layers (lora_a {a.shape}), "
                       f"the config says {len(modules)}")
    names.add(path[-1])
    tensors_by_module.append((path, modules, a, b))
  if names != set(s.targets):
    raise ValueError(f"The adapters adapt {sorted(names)}, model.lora.targets="
                     f"{tuple(s.targets)}")

  writer = jax.process_index() == 0
  tensors: dict[str, np.ndarray] = {}
  for path, modules, a, b in tensors_by_module:
    a, b = hf_io._host_value(a), hf_io._host_value(b)  # collectives: every process
    if not writer:
      continue
    if "layers" not in path:
      a, b = a[None], b[None]
    for i, module in enumerate(modules):
      tensors[f"{_WRAPPER_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
      tensors[f"{_WRAPPER_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
  if writer:
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": None,  # a plain PeftModel: LLaVA's forward takes pixel_values
        "base_model_name_or_path": base_model_name_or_path or None,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": int(s.alpha) if float(s.alpha).is_integer() else float(s.alpha),
        "lora_dropout": 0.0,
        "target_modules": _target_regex([m for _, modules, _, _ in tensors_by_module
                                         for m in modules]),
        "exclude_modules": None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "use_rslora": False,
        "lora_bias": False,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
    }
    with open(os.path.join(directory, ADAPTER_CONFIG_FILE), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
      f.write("\n")
    safetensors.numpy.save_file(tensors, os.path.join(directory, ADAPTER_WEIGHTS_FILE),
                                metadata={"format": "pt"})
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"save_peft_adapter {directory}")


def _peft_matches(config: dict, module: str) -> bool:
  """Whether PEFT adapts the module at path `module` (its `check_target_module_exists`
  for the options `load_peft_adapter` accepts)."""
  def listed(patterns: Any) -> bool:
    if isinstance(patterns, str):
      return re.fullmatch(patterns, module) is not None
    return any(module == p or module.endswith("." + p) for p in patterns)

  if config.get("exclude_modules") and listed(config["exclude_modules"]):
    return False
  return listed(config["target_modules"])


def _check_config(config: dict, file: str, s: ml_collections.ConfigDict) -> None:
  if config.get("peft_type") != "LORA":
    raise ValueError(f"{file}: peft_type={config.get('peft_type')!r}; only 'LORA' adapters "
                     "are supported")
  if config.get("r") != int(s.rank):
    raise ValueError(f"{file}: r={config.get('r')!r}, but model.lora.rank={s.rank}")
  alpha = config.get("lora_alpha")
  if not isinstance(alpha, (int, float)) or float(alpha) != float(s.alpha):
    raise ValueError(f"{file}: lora_alpha={alpha!r}, but model.lora.alpha={s.alpha}")
  if config.get("bias", "none") != "none":
    raise ValueError(f"{file}: bias={config['bias']!r}; only 'none' is supported (the "
                     "model's projections have no bias)")
  for option in _UNSUPPORTED:
    if config.get(option):
      raise ValueError(f"{file}: {option}={config[option]!r} is not supported (plain LoRA "
                       "only: W + (lora_alpha / r) B A on every layer of the targets)")
  targets = config.get("target_modules")
  if not targets or not isinstance(targets, (str, list)):
    raise ValueError(f"{file}: target_modules={targets!r}; expected a regex or a list of "
                     f"module names among {lora.TARGETS}")
  if isinstance(targets, list):
    unknown = [t for t in targets if str(t).split(".")[-1] not in lora.TARGETS]
    if unknown:
      raise ValueError(f"{file}: target_modules names {unknown}, not among the "
                       f"projections LoRA can adapt here, lora.TARGETS={lora.TARGETS}")


def _expected_modules(cfg: ml_collections.ConfigDict, s: Any, base_shapes: Params
                      ) -> dict[str, tuple[tuple[str, ...], int, tuple, tuple, str]]:
  """Hub module path -> (Flax path, layer, A shape, B shape, transformers module path) of
  the modules `s` adapts."""
  shapes = jax.eval_shape(lambda: lora.init_adapters(base_shapes, s, jax.random.key(0)))
  out = {}
  for path, module in _adapted(shapes):
    a, b = module["lora_a"].shape, module["lora_b"].shape
    for i, name in enumerate(hf_io.module_names(cfg, path)):
      out[_hub(name)] = (path, i, (a[-1], a[-2]), (b[-1], b[-2]), name)
  return out


def _check_targets(config: dict, file: str, cfg: ml_collections.ConfigDict,
                   base_shapes: Params, expected: dict[str, Any]) -> None:
  """Checks that `target_modules` adapts exactly the modules of `expected` (hub paths)."""
  # Every module of the model (and its parents, which PEFT also tries), in both layouts;
  # messages name them as transformers 5 does.
  candidates, shown = set(), {}
  for leaf_path, _ in hf_io._leaves(base_shapes):
    for name in hf_io.module_names(cfg, leaf_path[:-1]):
      for layout in (name, _hub(name)):
        parts = layout.split(".")
        prefixes = [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
        candidates.update(prefixes)
        if layout == name:
          shown.update((_hub(p), p) for p in prefixes)
  adapted = {_hub(m) for m in candidates if _peft_matches(config, m)}
  what = f"{file}: target_modules={config['target_modules']!r}"
  every = ml_collections.ConfigDict(dict(rank=int(cfg.lora.rank), targets=lora.TARGETS))
  adaptable = _expected_modules(cfg, every, base_shapes)
  other = sorted(shown.get(m, m) for m in adapted - set(adaptable))
  if other:
    raise ValueError(f"{what} adapts {len(other)} modules LoRA cannot adapt here, e.g. "
                     f"{other[:3]} (only the language model's projections {lora.TARGETS})")
  missing = sorted(expected[m][-1] for m in set(expected) - adapted)
  if adapted != set(expected):
    names = sorted({m.rsplit(".", 1)[-1] for m in adapted})
    raise ValueError(f"{what} adapts {names or 'nothing'}, but model.lora.targets="
                     f"{tuple(cfg.lora.targets)}" + (f" (it leaves out {missing[:3]})"
                                                     if missing and adapted else ""))


def _read_config(directory: str | os.PathLike) -> tuple[str, str, dict]:
  """(adapter_config.json's path, adapter_model.safetensors's path, the config)."""
  directory = os.fspath(directory)
  config_file = os.path.join(directory, ADAPTER_CONFIG_FILE)
  weights_file = os.path.join(directory, ADAPTER_WEIGHTS_FILE)
  for file in (config_file, weights_file):
    if not os.path.isfile(file):
      raise FileNotFoundError(f"No {os.path.basename(file)} in {directory} (a PEFT adapter "
                              f"directory holds {ADAPTER_CONFIG_FILE} and "
                              f"{ADAPTER_WEIGHTS_FILE})")
  try:
    with open(config_file) as f:
      return config_file, weights_file, json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_file}: not JSON ({e})") from None


def load_peft_adapter(directory: str | os.PathLike, model_cfg: ml_collections.ConfigDict,
                      base_shapes: Params) -> Params:
  """Reads a PEFT LoRA adapter directory into `lora`'s adapters tree.

  Args:
    directory: holds adapter_config.json and adapter_model.safetensors (as written by
      `save_peft_adapter` or PEFT's `save_pretrained`).
    model_cfg: the model config, LoRA on: the adapter must have its rank, alpha and
      targets.
    base_shapes: the base parameter tree (arrays or `jax.ShapeDtypeStruct`s, e.g.
      ``model.param_shapes(lora.base_config(model_cfg))``) the adapter must fit.

  Returns:
    The adapters, structured as ``lora.init_adapters(base_shapes, model_cfg.lora, rng)``
    (``lora_a`` [L, in, r], ``lora_b`` [L, r, out]), float32 host NumPy arrays: the
    caller places them; ``lora.merge(base, adapters)`` is the policy.

  Raises:
    FileNotFoundError: a missing file.
    ValueError: an adapter that does not fit the model (named: the file and the field,
      or the tensor with its shape and the expected one).
  """
  s = _settings(model_cfg)
  config_file, weights_file, config = _read_config(directory)
  _check_config(config, config_file, s)

  expected = _expected_modules(model_cfg, s, base_shapes)
  _check_targets(config, config_file, model_cfg, base_shapes, expected)

  arrays: dict[tuple[tuple[str, ...], str], list] = {}
  with safetensors.safe_open(weights_file, framework="np") as handle:
    keys = list(handle.keys())
    found: dict[tuple[str, str], str] = {}  # (hub module path, lora_A / lora_B) -> key
    unexpected = []
    for key in keys:
      match = _KEY.match(key)
      hub = _hub(match["module"]) if match else None
      if hub not in expected:
        unexpected.append(key)
      elif (hub, match["tensor"]) in found:
        raise ValueError(f"{weights_file}: tensor {key} duplicates "
                         f"{found[hub, match['tensor']]} (the same module's "
                         f"{match['tensor']})")
      else:
        found[hub, match["tensor"]] = key
    if unexpected:
      raise ValueError(f"{weights_file}: {len(unexpected)} tensors the model has no place "
                       f"for, e.g. {unexpected[:3]} (expected base_model.model.<module>."
                       f"lora_{{A,B}}.weight for the modules of model.lora.targets="
                       f"{tuple(s.targets)})")
    missing = [f"{_WRAPPER_PREFIX}{expected[hub][-1]}.{tensor}.weight" for hub in expected
               for tensor in ("lora_A", "lora_B") if (hub, tensor) not in found]
    if missing:
      raise ValueError(f"{weights_file}: {len(missing)} tensors missing, e.g. {missing[:3]}")
    for (hub, tensor), key in found.items():
      path, i, a_shape, b_shape, _ = expected[hub]
      want = a_shape if tensor == "lora_A" else b_shape
      shape = tuple(handle.get_slice(key).get_shape())
      if shape != want:
        raise ValueError(f"{weights_file}: tensor {key} has shape {shape}, expected {want} "
                         f"({'[r, in]' if tensor == 'lora_A' else '[out, r]'} for the base "
                         "model): an adapter for another base?")
      leaf = "lora_a" if tensor == "lora_A" else "lora_b"
      arrays.setdefault((path, leaf), {})[i] = handle.get_tensor(key).astype(np.float32).T

  out: Params = {}
  for (path, leaf), per_layer in arrays.items():
    stacked = np.stack([per_layer[i] for i in range(len(per_layer))])
    node = out
    for key in path:
      node = node.setdefault(key, {})
    node[leaf] = np.ascontiguousarray(stacked if "layers" in path else stacked[0])
  return out


def load_peft_adapter_for(directory: str | os.PathLike, base_cfg: ml_collections.ConfigDict,
                          base_shapes: Params) -> tuple[Params, ml_collections.ConfigDict]:
  """A PEFT LoRA adapter with its own settings, for a base of `base_cfg`'s architecture
  (LoRA off): its rank and alpha from adapter_config.json, its targets the projections
  its tensors adapt; then `load_peft_adapter`'s checks (a tensor that does not fit the
  base, a rank its tensors contradict, ... are errors naming them).

  Returns:
    (the adapters, the ``model.lora`` settings they were trained with; `lora.fold`
    with them gives plain weights).
  """
  config_file, weights_file, config = _read_config(directory)
  with safetensors.safe_open(weights_file, framework="numpy") as f:
    modules = {m.group("module").rsplit(".", 1)[-1] for m in map(_KEY.match, f.keys()) if m}
  rank, alpha = config.get("r"), config.get("lora_alpha")
  if not isinstance(rank, int) or rank <= 0:
    raise ValueError(f"{config_file}: r={rank!r} must be a positive integer")
  if not isinstance(alpha, (int, float)) or alpha <= 0:
    raise ValueError(f"{config_file}: lora_alpha={alpha!r} must be a positive number")
  targets = tuple(t for t in lora.TARGETS if t in modules)
  settings = lora.default_config()
  settings.update(rank=rank, alpha=float(alpha), targets=targets or tuple(sorted(modules)))
  model_cfg = base_cfg.copy_and_resolve_references()
  model_cfg.lora = settings
  return load_peft_adapter(directory, model_cfg, base_shapes), settings
