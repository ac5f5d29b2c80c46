"""Optimizer: AdamW with linear warmup + cosine (or linear/constant) decay, global-norm
clipping and frozen parameter sub-trees.

Frozen sub-trees (e.g. the CLIP vision tower, which LLaVA keeps fixed) get
`optax.set_to_zero()`: no update and no Adam moments, so they cost no optimizer memory.
Clipping and weight decay only see the trainable parameters. Gradient accumulation is
not done here but inside the train step (a `lax.scan` over micro-batches, see
`rlhfv_jax.train.step`), so one call of the step is one optimizer update and the
learning-rate schedule counts real updates.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax
import optax

TRAINABLE = "trainable"
FROZEN = "frozen"
SCHEDULES = ("cosine", "linear", "constant")


def path_str(path: Sequence[Any]) -> str:
  """'/'-joined readable name of a pytree key path, e.g. 'language_model/layers_0/kernel'."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def frozen_labels(params: Any, frozen: Iterable[str]) -> Any:
  """Labels every leaf TRAINABLE or FROZEN by '/'-path prefix.

  Args:
    params: the parameter pytree.
    frozen: path prefixes such as "vision_tower" or "language_model/embed_tokens". A
      prefix matches whole path components only ("vision" does not match
      "vision_tower").

  Returns:
    A pytree of labels with the structure of `params`.

  Raises:
    ValueError: a prefix matches no parameter (most likely a typo in the config); the
      message lists the top-level names that exist.
  """
  frozen = tuple(p.strip("/") for p in frozen)
  hits = {p: 0 for p in frozen}

  def label(path, _):
    name = path_str(path)
    for prefix in frozen:
      if name == prefix or name.startswith(prefix + "/"):
        hits[prefix] += 1
        return FROZEN
    return TRAINABLE

  labels = jax.tree_util.tree_map_with_path(label, params)
  missing = [p for p, n in hits.items() if n == 0]
  if missing:
    top = sorted({path_str(path).split("/")[0]
                  for path, _ in jax.tree_util.tree_leaves_with_path(params)})
    raise ValueError(f"optim.frozen names {missing}, which match no parameter; top-level "
                     f"parameter names are {top}")
  return labels


def make_lr_schedule(optim_config: Any, total_steps: int) -> optax.Schedule:
  """Learning rate per optimizer update: linear warmup from 0, then the decay.

  Args:
    optim_config: config.optim with learning_rate, schedule (one of SCHEDULES),
      warmup_steps (used when > 0) or warmup_fraction of `total_steps`, and
      end_lr_fraction (final lr as a fraction of the peak; cosine/linear only).
    total_steps: number of optimizer updates of the whole run.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps={total_steps} must be > 0")
  peak = float(optim_config.learning_rate)
  warmup = warmup_steps(optim_config, total_steps)
  end = peak * float(optim_config.get("end_lr_fraction", 0.0))
  kind = optim_config.get("schedule", "cosine")
  if kind not in SCHEDULES:
    raise ValueError(f"optim.schedule={kind!r}; expected one of {SCHEDULES}")
  warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
  decay_steps = max(total_steps - warmup, 1)
  if kind == "cosine":
    decay_fn = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
  elif kind == "linear":
    decay_fn = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay_fn = optax.constant_schedule(peak)
  if warmup == 0:
    return decay_fn
  return optax.join_schedules([warmup_fn, decay_fn], [warmup])


def warmup_steps(optim_config: Any, total_steps: int) -> int:
  """Warmup length in updates: `warmup_steps` if set (> 0), else a fraction of the run."""
  explicit = int(optim_config.get("warmup_steps", 0) or 0)
  if explicit > 0:
    return explicit
  return int(round(float(optim_config.get("warmup_fraction", 0.0)) * total_steps))


NO_DECAY_NAMES = frozenset({"bias", "scale"})


def _decay_mask(params: Any) -> Any:
  # Decay weight matrices and embeddings; not biases or norm scales. The leaf name is
  # checked as well as the rank because stacked (scanned) layers give every leaf a
  # leading layer axis, so a norm scale is 2-D there.
  def decay(path, p):
    return p.ndim >= 2 and path_str(path).split("/")[-1] not in NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(decay, params)


def make_optimizer(optim_config: Any, params: Any,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule, Any]:
  """Builds the optimizer for `params`.

  Args:
    optim_config: config.optim: learning_rate, schedule, warmup_fraction/warmup_steps,
      end_lr_fraction, b1, b2, eps, weight_decay, max_grad_norm (<= 0 disables
      clipping), frozen (tuple of path prefixes).
    params: the parameter pytree (or its `jax.eval_shape`), used for labels and masks.
    total_steps: number of optimizer updates of the run (for the schedule).

  Returns:
    (optimizer, lr_schedule, labels): labels is the TRAINABLE/FROZEN pytree, which the
    train step uses to skip gradients of frozen sub-trees.
  """
  schedule = make_lr_schedule(optim_config, total_steps)
  labels = frozen_labels(params, optim_config.get("frozen", ()))
  parts = []
  max_norm = float(optim_config.get("max_grad_norm", 0.0) or 0.0)
  if max_norm > 0:
    parts.append(optax.clip_by_global_norm(max_norm))
  parts.append(optax.adamw(
      schedule,
      b1=float(optim_config.get("b1", 0.9)),
      b2=float(optim_config.get("b2", 0.999)),
      eps=float(optim_config.get("eps", 1e-8)),
      weight_decay=float(optim_config.get("weight_decay", 0.0)),
      mask=_decay_mask))
  optimizer = optax.multi_transform(
      {TRAINABLE: optax.chain(*parts), FROZEN: optax.set_to_zero()}, labels)
  return optimizer, schedule, labels


def trainable_mask(labels: Any) -> Any:
  """A pytree of Python bools (True = trainable) from `make_optimizer`'s labels."""
  return jax.tree.map(lambda label: label == TRAINABLE, labels)
