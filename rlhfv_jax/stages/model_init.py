"""Where a run's model comes from: its architecture and its starting parameters.

* `resolve_model_config`: with ``init.model_from_checkpoint`` (the recipes' default when
  no size is pinned) the architecture is read from where the params come from — the
  HF checkpoint's ``config.json`` (``init.params="hf"``) or the earlier run's
  resolved ``config.json`` (``init.params="checkpoint"``) — keeping the run's execution
  settings (dtype, param_dtype, remat).
* `check_checkpoint_shapes`: a pinned size is compared with the checkpoint's parameter
  shapes before anything runs (the HF ``config.json``, or the run's orbax metadata),
  so a mismatch is one line naming the differing parameters and the way out.
* `load_initial_params`: random, an HF directory (any family of `rlhfv_jax.model.families`), or an earlier stage's checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from rlhfv_jax import model as model_lib
from rlhfv_jax.model import lora
from rlhfv_jax.train import checkpointing
from rlhfv_jax.train import mesh as mesh_lib
from rlhfv_jax.train import optimizer as optimizer_lib

CHECKPOINT_DIR = "checkpoints"
# The resolved config every run writes into its workdir (`runner.run`).
RUN_CONFIG_FILE = "config.json"
# Model-config fields that say how the run executes, not what the checkpoint holds (its
# LoRA adapters too: a run adapts its own starting point).
RUN_SETTINGS = ("dtype", "param_dtype", "remat", "logits_chunk", "lora")


def checkpoint_dir(workdir: str | os.PathLike) -> str:
  """Where a run keeps its checkpoints (and a later stage finds its init)."""
  return os.path.join(os.fspath(workdir), CHECKPOINT_DIR)


def resolve_model_config(config: Any) -> Any:
  """`config` with `config.model` taken from the checkpoint when the run asks for it.

  Applies when ``init.model_from_checkpoint`` and the params come from an HF checkpoint
  or an earlier run; otherwise the config is returned unchanged. Modifies `config` in
  place (a locked ConfigDict too) and logs what it did. Idempotent.
  """
  init = config.get("init")
  if not init or not init.get("model_from_checkpoint"):
    return config
  if init.get("params") == "hf" and init.get("hf_checkpoint"):
    source = os.path.join(init.hf_checkpoint, "config.json")
    from_checkpoint = model_lib.config_from_hf(init.hf_checkpoint)
  elif init.get("params") == "checkpoint" and init.get("checkpoint_dir"):
    source = os.path.join(init.checkpoint_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(source):
      raise FileNotFoundError(
          f"init.model_from_checkpoint: no {source} (the resolved config every run writes "
          "into its workdir); pin the model size in the config instead")
    with open(source) as f:
      from_checkpoint = ml_collections.ConfigDict(json.load(f)["model"])
    model_lib.validate_config(from_checkpoint)
  else:
    return config  # random init, or validation names the missing path
  for name in RUN_SETTINGS:
    if name in config.model:
      from_checkpoint[name] = config.model[name]
  changed = sorted(_differences(config.model.to_dict(), from_checkpoint.to_dict()))
  with config.unlocked():
    config.model = from_checkpoint
  logging.info("model config from %s (init.model_from_checkpoint): %s", source,
               ", ".join(changed) if changed else "same as the config's")
  return config


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}={b!r} (config had {a!r})")
  return out


_WAY_OUT = ("Give no size (no ':7b' / ':13b' argument, no --config.model.* overrides) so "
            "that the architecture follows the checkpoint (init.model_from_checkpoint=True), "
            "or point init at a checkpoint of the config's size")


def _check_family(stored: Any, model_cfg: Any, source: str) -> None:
  """Raises a ValueError when a checkpoint is of another model family than the config."""
  have, want = model_lib.family_of(stored).name, model_lib.family_of(model_cfg).name
  if have != want:
    raise ValueError(f"{source} is a {have} checkpoint but config.model is {want}: use a "
                     f"configs/{have}_*.py recipe, or init.model_from_checkpoint=True")


def _check_param_shapes(params: Any, expected: Any, source: str) -> None:
  """Raises a ValueError naming the parameters whose shapes differ (first five)."""
  shapes = lambda tree: {optimizer_lib.path_str(path): tuple(x.shape)
                         for path, x in jax.tree_util.tree_leaves_with_path(tree)}
  got, want = shapes(params), shapes(expected)
  diffs = [f"{name}: {got.get(name)} vs config {shape}" for name, shape in want.items()
           if got.get(name) != shape]
  diffs += [f"{name}: not in config.model" for name in sorted(got.keys() - want.keys())]
  if diffs:
    more = f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else ""
    raise ValueError(f"{source} does not match config.model: {'; '.join(diffs[:5])}{more}. "
                     f"{_WAY_OUT}.")


def lora_pointer(run_dir: str) -> dict | None:
  """A LoRA run's base pointer (`lora.write_base_pointer`: its ``init`` and
  ``model.lora``), or None for a run that trained every parameter."""
  path = os.path.join(checkpoint_dir(run_dir), lora.BASE_POINTER)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _lora_trained_shapes(config: Any, pointer: dict) -> Any:
  """What the LoRA run of `pointer` trained, as shapes for the consumer's architecture."""
  base = model_lib.param_shapes(lora.base_config(config.model))
  s = ml_collections.ConfigDict(pointer["lora"])
  return jax.eval_shape(lambda b: lora.initial_trainable(b, s, jax.random.PRNGKey(0)), base)


def restore_lora_trained(config: Any, pointer: dict) -> tuple[Any, ml_collections.ConfigDict]:
  """What the LoRA run ``init.checkpoint_dir`` (its `lora_pointer`) trained, replicated,
  and its ``model.lora``; its base is not read."""
  shapes = _lora_trained_shapes(config, pointer)
  ckpt, step = _checked_checkpoint(config, shapes)
  try:
    logging.info("initial params: LoRA run %s step %d", ckpt.directory, step)
    trained = ckpt.restore_params(step, checkpointing.abstract_with_shardings(
        shapes, jax.tree.map(lambda _: mesh_lib.replicated(), shapes)))
  finally:
    ckpt.close()
  return trained, ml_collections.ConfigDict(pointer["lora"])


def _load_lora_run(config: Any, pointer: dict, target_shardings: Any) -> Any:
  """The plain weights of a LoRA run: its base, loaded as its own ``init`` says (which
  may be another run), with what it trained folded in."""
  base_config = copy.deepcopy(config)
  with base_config.unlocked():
    base_config.init = ml_collections.ConfigDict(pointer["init"])
    base_config.seed = pointer["seed"]
    # Adapters it imported were trained on in the run: they are in its checkpoint.
    base_config.init.peft_adapter = ""
    base_config.model.lora = lora.default_config()
  logging.info("initial params: the base of LoRA run %s: %s", config.init.checkpoint_dir,
               describe_init(base_config))
  base = load_initial_params(base_config, target_shardings)
  trained, settings = restore_lora_trained(config, pointer)
  return lora.fold(lora.merge(base, trained), settings)


def _checked_checkpoint(config: Any, expected: Any) -> tuple[checkpointing.Checkpointer, int]:
  """The Checkpointer of `init.checkpoint_dir` and the step `init.checkpoint_step` names,
  once its stored parameter shapes (orbax metadata, no weights) are `expected`'s."""
  init = config.init
  directory = checkpoint_dir(init.checkpoint_dir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"init.checkpoint_dir={init.checkpoint_dir!r}: no {directory} "
                            "(the workdir of a finished sft/ddpo run)")
  ckpt = checkpointing.Checkpointer(directory, save_every_steps=1)
  step = ckpt.latest_step() if init.checkpoint_step < 0 else init.checkpoint_step
  if step is None or step not in ckpt.all_steps():
    raise FileNotFoundError(
        f"init.checkpoint_dir={init.checkpoint_dir!r}: no checkpoint "
        f"{'at all' if step is None else f'at step {step}'} under {ckpt.directory}")
  # Before orbax restores: a restore into other shapes fails deep inside it, in many
  # interleaved tracebacks.
  _check_param_shapes(ckpt.param_shapes(step), expected,
                      f"init.checkpoint_dir={init.checkpoint_dir} (step {step})")
  return ckpt, step


def check_checkpoint_shapes(config: Any) -> None:
  """Compares config.model's parameter shapes with those of the checkpoint `init` names,
  reading only its config or metadata (no weights).

  Raises:
    ValueError: the shapes differ (the message names them and the way out).
    FileNotFoundError: `init` names a checkpoint that is not there.
  """
  init = config.get("init")
  if not init or init.get("params") not in ("hf", "checkpoint"):
    return
  expected = model_lib.param_shapes(lora.base_config(config.model))
  if init.params == "hf" and init.get("hf_checkpoint"):
    source = f"init.hf_checkpoint={init.hf_checkpoint}"
    stored_cfg = model_lib.config_from_hf(init.hf_checkpoint)
    _check_family(stored_cfg, config.model, source)
    _check_param_shapes(model_lib.param_shapes(stored_cfg), expected, source)
  elif init.params == "checkpoint" and init.get("checkpoint_dir"):
    pointer = lora_pointer(init.checkpoint_dir)
    if pointer is not None:  # a LoRA run: its checkpoints hold what it trained
      expected = _lora_trained_shapes(config, pointer)
    _checked_checkpoint(config, expected)[0].close()


def load_initial_params(config: Any, target_shardings: Any = None) -> Any:
  """The starting params named by `config.init` (random, an HF dir, or a checkpoint:
  of a LoRA run, its base with its adapters folded in; then an ``init.peft_adapter``
  folded in), as plain weights (no adapters) of `config.model`'s architecture.

  Args:
    config: the run config.
    target_shardings: shardings the params are built in (a checkpoint restore, an HF
      import read slice by slice); default: replicated (a checkpoint) or host arrays (HF).
  """
  params = _load_start(config, target_shardings)
  if config.init.get("peft_adapter"):
    # A PEFT LoRA adapter on that start (e.g. trained with TRL or LLaMA-Factory): folded
    # in, it is the starting point like an earlier stage's result.
    from rlhfv_jax.model import peft_io  # local: safetensors
    adapters, settings = peft_io.load_peft_adapter_for(
        config.init.peft_adapter, lora.base_config(config.model), params)
    logging.info("initial params: + PEFT adapter %s (rank %d, alpha %g) folded in",
                 config.init.peft_adapter, settings.rank, settings.alpha)
    params = lora.fold(lora.merge(params, adapters), settings)
  return params


def _load_start(config: Any, target_shardings: Any) -> Any:
  """`load_initial_params` before an ``init.peft_adapter``."""
  init, cfg = config.init, lora.base_config(config.model)
  expected = model_lib.param_shapes(cfg)
  if init.params == "checkpoint" and init.checkpoint_dir:
    pointer = lora_pointer(init.checkpoint_dir)
    if pointer is not None:
      return _load_lora_run(config, pointer, target_shardings)
  if init.params == "random":
    return model_lib.init_params(cfg, jax.random.PRNGKey(config.seed))
  if init.params == "hf":
    from rlhfv_jax.model import hf_io  # local: safetensors + transformers config
    source = f"init.hf_checkpoint={init.hf_checkpoint}"
    stored_cfg = model_lib.config_from_hf(init.hf_checkpoint)
    _check_family(stored_cfg, cfg, source)
    if target_shardings is None:
      _, params = hf_io.load_hf(init.hf_checkpoint, param_dtype=cfg.param_dtype)
      _check_param_shapes(params, expected, source)
      return params
    # Straight into the target shardings, each process reading only its devices' slices
    # (no process holds the whole model). The checkpoint's config.json shapes are checked
    # first; the loader checks its tensors against them, all before reading any.
    _check_param_shapes(model_lib.param_shapes(stored_cfg), expected, source)
    logging.info("initial params: %s, loaded into the target shardings", source)
    return hf_io.load_hf_sharded(init.hf_checkpoint, target_shardings,
                                 param_dtype=cfg.param_dtype)[1]
  ckpt, step = _checked_checkpoint(config, expected)
  if target_shardings is None:
    target_shardings = jax.tree.map(lambda _: mesh_lib.replicated(), expected)
  logging.info("initial params: %s step %d", ckpt.directory, step)
  return ckpt.restore_params(step, checkpointing.abstract_with_shardings(expected,
                                                                        target_shardings))


def describe_init(config: Any) -> str:
  init = config.init
  return {"random": f"random (seed {config.seed})", "hf": f"hf:{init.hf_checkpoint}",
          "checkpoint": f"checkpoint:{init.checkpoint_dir}@{init.checkpoint_step}"}[init.params]
