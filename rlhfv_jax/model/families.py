"""Model families: everything the rest of the code may know about an architecture.

A family is one `Family` record. The model package's generic API (`rlhfv_jax.model`:
`make_apply_fn`, `init_params`, `generate`, `config_from_hf`, HF import/export, ...)
looks the family up from the model config (``config.model.family``) or from a
checkpoint's ``config.json`` (``model_type``) and calls through the record, so the
log-probs, the losses, the step, the data pipeline, the sampler, the stages and the
evals contain no family-specific branch.

Registered: ``llava15`` (LLaVA-1.5: CLIP ViT-L/336 -> MLP projector -> Vicuna/Llama-2)
and ``gemma3`` (Gemma 3: SigLIP -> pooled soft-token projector -> Gemma 3 decoder).

What a family provides (a third one, e.g. Qwen2.5-VL, adds a package with these):

* configs: named sizes, validation, `config.json` <-> model config;
* a Flax module with ``encode_images(pixels) -> [B, n, D]``, ``decode(input_ids,
  attention_mask, image_features, sequences_per_image, *, positions, segment_ids,
  shared_segment, kv_cache, cache_index, logits_index, logits_from, return_hidden)``
  and ``head(hidden) -> logits`` (see `rlhfv_jax.model.llava15.llava.Llava.decode`), plus
  ``init_kv_cache(cfg, rows, slots)``;
* its HF tensor naming (`hf_naming`, read by `rlhfv_jax.model.hf_io`);
* the names of its chat template and image processing, which the data layer looks up
  in its own registries (`rlhfv_jax.data.tokenizer.TEMPLATES`,
  `rlhfv_jax.data.images.PROCESSINGS`): the model layer never imports the data layer.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any, Callable, Mapping, Union

# Family name -> the package whose `FAMILY` describes it. Imported on first use.
_PACKAGES = {
    "llava15": "rlhfv_jax.model.llava15",
    "gemma3": "rlhfv_jax.model.gemma3",
}
DEFAULT = "llava15"  # model configs without a `family` field predate the registry


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family (see the module docstring).

  Attributes:
    name: the ``config.model.family`` value.
    hf_model_type: the ``model_type`` of its transformers ``config.json``.
    hf_class: the transformers class its HF directories load with.
    sizes: the named sizes `make_config` knows ("tiny" is the test size).
    make_config: ``(size, **overrides) -> ConfigDict``.
    validate_config: raises ValueError naming the field of a config that cannot work.
    config_from_hf: a ``config.json`` directory / path, or a transformers config ->
      model config (raises NotImplementedError for variants not implemented).
    to_hf_config: model config -> the transformers config of the same architecture.
    num_image_tokens: image placeholder tokens per image.
    module: model config -> the Flax module.
    init_kv_cache: ``(cfg, rows, slots) -> cache`` for `rlhfv_jax.model.generate`.
    hf_naming: how Flax parameter paths map to HF tensor names (`hf_io.Naming`).
    chat_template: a `rlhfv_jax.data.tokenizer.TEMPLATES` name.
    image_processing: a `rlhfv_jax.data.images.PROCESSINGS` name.
  """

  name: str
  hf_model_type: str
  hf_class: str
  sizes: tuple[str, ...]
  make_config: Callable[..., Any]
  validate_config: Callable[[Any], None]
  config_from_hf: Callable[[Any], Any]
  to_hf_config: Callable[[Any], Any]
  num_image_tokens: Callable[[Any], int]
  module: Callable[[Any], Any]
  init_kv_cache: Callable[[Any, int, int], Any]
  hf_naming: Any
  chat_template: str
  image_processing: str


def names() -> tuple[str, ...]:
  """The registered family names."""
  return tuple(_PACKAGES)


def get(name: str) -> Family:
  """The family called `name` (ValueError naming the registered ones otherwise)."""
  if name not in _PACKAGES:
    raise ValueError(f"model family {name!r} is not supported; supported families: "
                     f"{', '.join(_PACKAGES)}")
  return importlib.import_module(_PACKAGES[name]).FAMILY


def family_of(model_cfg: Mapping[str, Any]) -> Family:
  """The family of a model config (``family`` field; LLaVA-1.5 when it has none)."""
  return get(model_cfg.get("family", DEFAULT) or DEFAULT)


def hf_config_dict(path_or_config: Union[str, os.PathLike, Any]) -> dict[str, Any]:
  """The raw ``config.json`` of an HF directory / file, or a transformers config's dict."""
  if hasattr(path_or_config, "to_dict"):
    return path_or_config.to_dict()
  path = os.fspath(path_or_config)
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No HF config.json at {path}")
  with open(path) as f:
    return json.load(f)


def for_hf(path_or_config: Union[str, os.PathLike, Any]) -> Family:
  """The family of an HF checkpoint, from its ``config.json`` ``model_type``.

  Raises:
    ValueError: naming the checkpoint, its model_type and the supported families.
  """
  model_type = hf_config_dict(path_or_config).get("model_type")
  for name in _PACKAGES:
    family = get(name)
    if family.hf_model_type == model_type:
      return family
  supported = ", ".join(f"{get(n).hf_model_type!r} ({get(n).hf_class}, family {n})"
                        for n in _PACKAGES)
  where = (os.fspath(path_or_config) if isinstance(path_or_config, (str, os.PathLike))
           else type(path_or_config).__name__)
  raise ValueError(f"{where}: model_type {model_type!r} is not a supported model family; "
                   f"supported: {supported}")
