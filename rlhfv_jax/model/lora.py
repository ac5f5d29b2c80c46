"""LoRA: low-rank adapters on the decoder's projections, a feature of the model.

With ``model.lora.rank = r > 0`` each target projection of the language model (by
default every attention and MLP projection: `TARGETS`) computes

  y = x W + (alpha / r) (x A) B,      A: [in, r], B: [r, out]

(Hu et al. 2021; PEFT's layout and scaling). The adapters live next to the kernel in the
parameter tree (``language_model/layers/self_attn/q_proj/{kernel, lora_a, lora_b}``,
with the scanned layers' leading axis). A tree *without* them runs the base model, so
one model serves both sides of DDPO: the policy is ``merge(base, trainable)`` and the
reference is ``base`` itself, the same arrays (`LoRADense` adds the low-rank path only
where the adapters are present). The loss, the log-probs and the data never see LoRA.

What trains is `trainable`: the adapters and the modules ``model.lora.trained`` names
in full (e.g. the projector); it alone has optimizer state and is checkpointed. The base
is held in ``model.param_dtype`` (bfloat16 in the recipes) and never copied; adapters
and fully trained modules are float32. `fold` merges a trained run back into plain
weights (W + (alpha / r) A B) for export, evaluation and the next stage.

B starts at zero, A as PEFT initialises it (Kaiming-uniform, bound 1/sqrt(in)), so a
fresh policy equals its reference exactly. Dropout on the adapters' input is not
supported (``model.lora.dropout`` must be 0): the loss is a deterministic function of
the params, as for every stage here.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

# The decoder projections LoRA can adapt (their Flax module names, HF's too).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS = ("lora_a", "lora_b")
SCOPE = "language_model"  # LoRA adapts the decoder only (CLIP stays frozen as in LLaVA)


def default_config() -> ml_collections.ConfigDict:
  """``model.lora``: rank 0 = off."""
  return ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=TARGETS, dropout=0.0,
                                        trained=()))


def settings(model_cfg: Any) -> Optional[ml_collections.ConfigDict]:
  """The LoRA settings of a model config, None when LoRA is off (or absent: an older
  run's config)."""
  s = model_cfg.get("lora") if hasattr(model_cfg, "get") else None
  return s if s is not None and int(s.rank) > 0 else None


def enabled(model_cfg: Any) -> bool:
  return settings(model_cfg) is not None


def scaling(s: Any) -> float:
  """alpha / rank: what B A is multiplied by (PEFT's ``lora_alpha / r``)."""
  return float(s.alpha) / int(s.rank)


def base_config(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The model config without adapters (its parameter tree is the base's)."""
  out = copy.deepcopy(model_cfg)
  with out.unlocked():
    out.lora = default_config()
  return out


def problems(model_cfg: Any, frozen: tuple[str, ...] = ()) -> list[str]:
  """What is wrong with ``model.lora`` (each a message naming the field), and with
  `frozen` (a training run's ``optim.frozen`` prefixes) its `frozen_problems`."""
  s = model_cfg.get("lora")
  if s is None:
    return []
  out = []
  if int(s.rank) < 0:
    out.append(f"model.lora.rank={s.rank} must be >= 0 (0 turns LoRA off)")
  if int(s.rank) <= 0:
    return out
  if float(s.alpha) <= 0:
    out.append(f"model.lora.alpha={s.alpha} must be > 0")
  unknown = sorted(set(s.targets) - set(TARGETS))
  if unknown or not s.targets:
    out.append(f"model.lora.targets={tuple(s.targets)}: {unknown or 'empty'}; expected "
               f"names among {TARGETS} (the decoder's projections)")
  if float(s.dropout) != 0.0:
    out.append(f"model.lora.dropout={s.dropout}: only 0 is supported (the losses are "
               "deterministic functions of the params)")
  return out + frozen_problems(model_cfg, frozen)


def frozen_problems(model_cfg: Any, frozen: tuple[str, ...]) -> list[str]:
  """A module LoRA adapts or trains that ``optim.frozen`` freezes (LoRA on)."""
  s = settings(model_cfg)
  if s is None:
    return []
  out = []
  prefixes = [p.strip("/") for p in frozen]
  for prefix in prefixes:
    if SCOPE == prefix or SCOPE.startswith(prefix + "/") or prefix.startswith(SCOPE + "/"):
      out.append(f"model.lora.targets adapt {SCOPE}/.../{{{', '.join(s.targets)}}}, which "
                 f"optim.frozen={tuple(frozen)} freezes ({prefix!r}): unfreeze it or turn "
                 "LoRA off")
  for name in s.trained:
    clash = [p for p in prefixes if name == p or name.startswith(p + "/")
             or p.startswith(name + "/")]
    if clash:
      out.append(f"model.lora.trained names {name!r}, which optim.frozen={tuple(frozen)} "
                 f"freezes ({clash[0]!r})")
  return out


class LoRADense(nn.Module):
  """`nn.Dense` without bias, plus (alpha / r) (x A) B where the adapters are present.

  The kernel is at the same path as `nn.Dense`'s (``<name>/kernel``), so a base
  checkpoint loads unchanged; at init the adapters are created (A random, B zero).
  """

  features: int
  rank: int
  scale: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (x.shape[-1], self.features), self.param_dtype)
    x_, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = jax.lax.dot_general(x_, kernel, (((x_.ndim - 1,), (0,)), ((), ())))
    if self.is_initializing() or self.has_variable("params", "lora_a"):
      a = self.param("lora_a", _kaiming_uniform, (x.shape[-1], self.rank), jnp.float32)
      b = self.param("lora_b", nn.initializers.zeros, (self.rank, self.features),
                     jnp.float32)
      x_, a, b = nn.dtypes.promote_dtype(x, a, b, dtype=self.dtype)
      low = jax.lax.dot_general(x_, a, (((x_.ndim - 1,), (0,)), ((), ())))
      y = y + self.scale * jax.lax.dot_general(low, b, (((low.ndim - 1,), (0,)), ((), ())))
    return y


def _kaiming_uniform(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32
                     ) -> jax.Array:
  """PEFT's A init (torch's kaiming_uniform_ with a = sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))
  for A [in, r] (PEFT stores it as [r, in])."""
  bound = 1.0 / jnp.sqrt(shape[-2])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def dense(model_cfg: Any, features: int, name: str) -> nn.Module:
  """The decoder's projection `name`: a `LoRADense` when LoRA targets it, else `nn.Dense`."""
  dtype, param_dtype = jnp.dtype(model_cfg.dtype), jnp.dtype(model_cfg.param_dtype)
  s = settings(model_cfg)
  if s is not None and name in s.targets:
    return LoRADense(features, int(s.rank), scaling(s), dtype=dtype, param_dtype=param_dtype,
                     name=name)
  return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=param_dtype, name=name)


# --- parameter trees -----------------------------------------------------------------


def _targets_in(tree: Any, s: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
  """Paths of the modules LoRA adapts: dicts under `SCOPE` named in ``s.targets`` that
  hold a kernel."""
  out = []
  for key, value in tree.items():
    here = path + (key,)
    if not isinstance(value, dict):
      continue
    if here[0] == SCOPE and key in s.targets and "kernel" in value:
      out.append(here)
    else:
      out += _targets_in(value, s, here)
  return out


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def init_adapters(base: Any, s: Any, rng: jax.Array) -> dict:
  """Fresh adapters for the target kernels of `base` (arrays or shape structs): A as
  `LoRADense` initialises it, B zero; float32, with the kernels' leading (layer) axes."""
  out: dict = {}
  paths = _targets_in(base, s)
  if not paths:
    raise ValueError(f"model.lora.targets={tuple(s.targets)} adapt no parameter of "
                     f"{SCOPE}: the tree has none of these projections")
  for k, path in enumerate(paths):
    kernel = _get(base, path)["kernel"]
    *lead, fan_in, fan_out = kernel.shape
    a = _kaiming_uniform(jax.random.fold_in(rng, k), (*lead, fan_in, int(s.rank)))
    _set(out, path, {"lora_a": a,
                     "lora_b": jnp.zeros((*lead, int(s.rank), fan_out), jnp.float32)})
  return out


def initial_trainable(base: Any, s: Any, rng: jax.Array,
                      adapters: Optional[dict] = None) -> dict:
  """What a LoRA run trains, at its start: fresh adapters (or `adapters`, e.g. imported
  ones, to continue training them) and a float32 copy of each module ``s.trained``
  names (from `base`)."""
  out = (init_adapters(base, s, rng) if adapters is None
         else jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), adapters))
  for name in s.trained:
    path = tuple(name.strip("/").split("/"))
    try:
      module = _get(base, path)
    except KeyError:
      raise ValueError(f"model.lora.trained names {name!r}, which is not a module of the "
                       f"model (top level: {sorted(base)})") from None
    _set(out, path, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), module))
  return out


def merge(base: Any, trainable: Any) -> Any:
  """The policy's params: `base` with `trainable`'s leaves added or replacing its own
  (dicts are rebuilt, arrays are shared: nothing is copied)."""
  if not isinstance(trainable, dict):
    return trainable
  out = dict(base)
  for key, value in trainable.items():
    out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
  return out


def split(params: Any) -> tuple[dict, dict]:
  """(the tree without adapters, the adapters alone)."""
  base, adapters = {}, {}
  for key, value in params.items():
    if key in ADAPTERS:
      adapters[key] = value
    elif isinstance(value, dict):
      b, a = split(value)
      base[key] = b
      if a:
        adapters[key] = a
    else:
      base[key] = value
  return base, adapters


def fold(params: Any, s: Any) -> Any:
  """Plain weights from a tree with adapters: each adapted kernel becomes
  W + (alpha / r) A B (computed in float32, stored in the kernel's dtype); the adapters
  are dropped. A tree without adapters comes back as it is."""
  base, adapters = split(params)
  scale = scaling(s)

  def walk(b: Any, a: Any) -> Any:
    if "lora_a" in a:
      delta = scale * jnp.einsum("...ir,...ro->...io", jnp.asarray(a["lora_a"], jnp.float32),
                                 jnp.asarray(a["lora_b"], jnp.float32))
      kernel = b["kernel"]
      return dict(b, kernel=(jnp.asarray(kernel, jnp.float32) + delta).astype(kernel.dtype))
    return {k: walk(v, a[k]) if k in a else v for k, v in b.items()}

  return walk(base, adapters) if adapters else base


BASE_POINTER = "lora_base.json"


def write_base_pointer(checkpoint_dir: str, config: Any) -> None:
  """Writes what a LoRA run's checkpoints hold and where its base comes from:
  ``<checkpoint_dir>/lora_base.json`` = the run's ``init``, ``seed`` (a random base's)
  and ``model.lora`` (the checkpoints hold only what trains). Process 0 writes it."""
  if jax.process_index() != 0:
    return
  os.makedirs(checkpoint_dir, exist_ok=True)
  with open(os.path.join(checkpoint_dir, BASE_POINTER), "w") as f:
    json.dump({"init": config.init.to_dict(), "seed": int(config.seed),
               "lora": config.model.lora.to_dict()}, f, indent=2, sort_keys=True)


def num_params(tree: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))
