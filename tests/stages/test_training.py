"""The training stages' run length (no compilation)."""

from __future__ import annotations

from rlhfv_jax.stages import defaults
from rlhfv_jax.stages import training


def test_num_train_steps_from_epochs_or_explicit():
  config = defaults.base_config("ddpo", "tiny")
  config.train.update(global_batch_size=32, num_epochs=7.0, num_steps=0)
  assert training.num_train_steps(config, 1000) == 219  # ceil(7 * 1000 / 32)
  config.train.num_steps = 50
  assert training.num_train_steps(config, 1000) == 50
