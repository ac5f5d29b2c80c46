"""Stage plumbing that needs no compilation: run length, initial-params errors."""

from __future__ import annotations

import numpy as np
import pytest

from rlhfv_jax.train import defaults
from rlhfv_jax.train import runner


def test_num_train_steps_from_epochs_or_explicit():
  config = defaults.base_config("ddpo", "tiny")
  config.train.update(global_batch_size=32, num_epochs=7.0, num_steps=0)
  assert runner.num_train_steps(config, 1000) == 219  # ceil(7 * 1000 / 32)
  config.train.num_steps = 50
  assert runner.num_train_steps(config, 1000) == 50


def test_checkpoint_init_names_the_missing_directory(tmp_path):
  config = defaults.base_config("ddpo", "tiny")
  config.init.update(params="checkpoint", checkpoint_dir=str(tmp_path / "no_run"))
  with pytest.raises(FileNotFoundError, match="init.checkpoint_dir=.*no_run.*no .*checkpoints"):
    runner.load_initial_params(config)
  assert not (tmp_path / "no_run").exists()  # nothing created by looking
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  config.init.checkpoint_dir = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="no checkpoint at all"):
    runner.load_initial_params(config)


def test_param_shape_mismatch_lists_the_differences():
  expected = {"a": {"w": np.zeros((4, 2))}, "b": np.zeros(3)}
  params = {"a": {"w": np.zeros((4, 3))}, "b": np.zeros(3), "extra": np.zeros(1)}
  with pytest.raises(ValueError, match=r"a/w: \(4, 3\) vs config \(4, 2\).*extra: not in"):
    runner._check_param_shapes(params, expected, "HF checkpoint /m")
