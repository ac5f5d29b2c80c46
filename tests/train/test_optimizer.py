"""Optimizer: schedule against the closed form, AdamW + clipping + decay mask + frozen
sub-trees against a NumPy re-derivation."""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import optax
import pytest

from rlhfv_jax.stages import defaults
from rlhfv_jax.train import optimizer as optimizer_lib


def config(**overrides) -> ml_collections.ConfigDict:
  """The default optimizer config (cosine, 10% warmup) at lr 1e-3, no clipping."""
  optim = defaults.base_config("ddpo", "tiny").optim
  optim.update(dict(learning_rate=1e-3, max_grad_norm=0.0, frozen=()), **overrides)
  return optim


def test_warmup_then_cosine_matches_closed_form():
  total, peak, end_fraction = 200, 5e-7, 0.1
  schedule = optimizer_lib.make_lr_schedule(
      config(learning_rate=peak, end_lr_fraction=end_fraction), total)
  warmup = 20  # 10% of 200, the paper's warmup
  for step in (0, 1, 10, 19):
    assert schedule(step) == pytest.approx(peak * step / warmup, rel=1e-6, abs=1e-15)
  for step in (20, 50, 110, 199, 200):
    progress = (step - warmup) / (total - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    want = peak * (end_fraction + (1 - end_fraction) * cosine)
    assert schedule(step) == pytest.approx(want, rel=1e-5), step


def test_linear_and_constant_schedules_and_explicit_warmup():
  linear = optimizer_lib.make_lr_schedule(
      config(schedule="linear", warmup_steps=5, warmup_fraction=0.5), 105)
  assert linear(5) == pytest.approx(1e-3)   # explicit warmup_steps wins over the fraction
  assert linear(55) == pytest.approx(5e-4)
  assert linear(105) == pytest.approx(0.0, abs=1e-12)
  constant = optimizer_lib.make_lr_schedule(config(schedule="constant", warmup_fraction=0.0), 10)
  assert [float(constant(s)) for s in (0, 9)] == pytest.approx([1e-3, 1e-3])


def numpy_adamw(params, grads_per_step, lrs, *, b1, b2, eps, weight_decay, max_norm, frozen):
  """Reference AdamW (decoupled decay on weight matrices, global-norm clipping of trainable
  gradients, frozen leaves untouched), written from the Loshchilov & Hutter update."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(p) for k, p in params.items()}
  for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
    trainable = [k for k in params if k not in frozen]
    norm = math.sqrt(sum(np.sum(grads[k].astype(np.float64) ** 2) for k in trainable))
    scale = min(1.0, max_norm / norm) if max_norm > 0 else 1.0
    for k in trainable:
      g = grads[k] * scale
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
      update = m_hat / (np.sqrt(v_hat) + eps)
      if params[k].ndim >= 2 and k not in ("bias", "scale"):
        update = update + weight_decay * params[k]
      params[k] = params[k] - lr * update
  return params


def test_adamw_clipping_decay_mask_and_frozen_match_numpy_reference():
  rng = np.random.default_rng(0)
  params = {"vision_tower": rng.standard_normal((3, 4)).astype(np.float32),
            "w": rng.standard_normal((4, 5)).astype(np.float32),
            "bias": rng.standard_normal(5).astype(np.float32),
            # A norm scale of 2 stacked (scanned) layers: 2-D, but never decayed.
            "scale": rng.standard_normal((2, 5)).astype(np.float32)}
  grads = [{k: (rng.standard_normal(p.shape) * s).astype(np.float32) for k, p in params.items()}
           for s in (3.0, 0.1, 1.0)]
  cfg = config(learning_rate=0.1, warmup_steps=1, weight_decay=0.05, max_grad_norm=1.0,
               b2=0.95, frozen=("vision_tower",))
  optimizer, schedule, _ = optimizer_lib.make_optimizer(cfg, params, total_steps=3)
  opt_state = optimizer.init(params)
  current = params
  for g in grads:
    updates, opt_state = optimizer.update(g, opt_state, current)
    current = optax.apply_updates(current, updates)
  lrs = [float(schedule(s)) for s in range(3)]
  assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.1)
  want = numpy_adamw(params, grads, lrs, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
                     max_norm=1.0, frozen={"vision_tower"})
  for k in params:
    np.testing.assert_allclose(current[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)
  np.testing.assert_array_equal(current["vision_tower"], params["vision_tower"])


def test_frozen_labels_match_whole_path_components():
  params = {"vision_tower": {"a": np.zeros(2)}, "vision_proj": np.zeros(2),
            "language_model": {"embed_tokens": np.zeros(2), "layers": {"w": np.zeros(2)}}}
  labels = optimizer_lib.frozen_labels(params, ["vision_tower", "language_model/embed_tokens"])
  assert labels == {"vision_tower": {"a": "frozen"}, "vision_proj": "trainable",
                    "language_model": {"embed_tokens": "frozen", "layers": {"w": "trainable"}}}
  assert optimizer_lib.trainable_mask(labels)["vision_proj"] is True


def test_frozen_prefix_that_matches_nothing_is_an_error():
  params = {"vision_tower": {"a": np.zeros(2)}, "projector": {"b": np.zeros(2)}}
  with pytest.raises(ValueError, match=r"optim.frozen names \['vison_tower'\].*"
                     r"\['projector', 'vision_tower'\]"):
    optimizer_lib.frozen_labels(params, ["vison_tower"])


def test_unknown_schedule_is_an_error():
  with pytest.raises(ValueError, match="optim.schedule='step'"):
    optimizer_lib.make_lr_schedule(config(schedule="step"), 10)
