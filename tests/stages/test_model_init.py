"""Where a run's model comes from: the architecture (config or checkpoint) and params."""

from __future__ import annotations

import numpy as np
import pytest

from rlhfv_jax import model as model_lib
from rlhfv_jax.stages import defaults
from rlhfv_jax.stages import model_init


def _hf_dir(tmp_path, size="tiny"):
  """A llava-hf directory holding only config.json (all `resolve_model_config` reads)."""
  directory = tmp_path / f"llava-{size}"
  model_lib.to_hf_config(model_lib.llava_config(size)).save_pretrained(directory)
  return directory


def test_model_follows_the_hf_checkpoint_when_asked(tmp_path):
  config = defaults.base_config("ddpo", "7b")  # a recipe's placeholder size
  config.model.update(dtype="bfloat16", remat=True)
  config.init.update(params="hf", hf_checkpoint=str(_hf_dir(tmp_path)),
                     model_from_checkpoint=True)
  config.lock()
  model_init.resolve_model_config(config)
  tiny = model_lib.llava_config("tiny")
  assert config.model.text.to_dict() == tiny.text.to_dict()
  assert config.model.vision.to_dict() == tiny.vision.to_dict()
  # The run's execution settings are the run's, not the checkpoint's.
  assert (config.model.dtype, config.model.remat) == ("bfloat16", True)
  before = config.model.to_dict()
  model_init.resolve_model_config(config)  # idempotent
  assert config.model.to_dict() == before


def test_model_follows_an_earlier_runs_config(tmp_path):
  earlier = defaults.base_config("sft", "tiny")
  earlier.model.text.num_layers = 3
  (tmp_path / "sft").mkdir()
  (tmp_path / "sft" / "config.json").write_text(earlier.to_json_best_effort())
  config = defaults.base_config("ddpo", "7b")
  config.init.update(params="checkpoint", checkpoint_dir=str(tmp_path / "sft"),
                     model_from_checkpoint=True)
  model_init.resolve_model_config(config)
  assert config.model.to_dict() == earlier.model.to_dict()
  config.init.checkpoint_dir = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="nothing/config.json.*pin the model size"):
    model_init.resolve_model_config(config)


@pytest.mark.parametrize("change", [
    dict(model_from_checkpoint=False),   # a pinned size stays as it is
    dict(params="random"),               # nothing to follow
])
def test_model_stays_the_configs_otherwise(tmp_path, change):
  config = defaults.base_config("ddpo", "7b")
  config.init.update(dict(dict(params="hf", hf_checkpoint=str(_hf_dir(tmp_path)),
                               model_from_checkpoint=True), **change))
  want = config.model.to_dict()
  model_init.resolve_model_config(config)
  assert config.model.to_dict() == want


def test_checkpoint_init_names_the_missing_directory(tmp_path):
  config = defaults.base_config("ddpo", "tiny")
  config.init.update(params="checkpoint", checkpoint_dir=str(tmp_path / "no_run"))
  with pytest.raises(FileNotFoundError, match="init.checkpoint_dir=.*no_run.*no .*checkpoints"):
    model_init.load_initial_params(config)
  assert not (tmp_path / "no_run").exists()  # nothing created by looking
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  config.init.checkpoint_dir = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="no checkpoint at all"):
    model_init.load_initial_params(config)


def test_param_shape_mismatch_lists_the_differences():
  expected = {"a": {"w": np.zeros((4, 2))}, "b": np.zeros(3)}
  params = {"a": {"w": np.zeros((4, 3))}, "b": np.zeros(3), "extra": np.zeros(1)}
  with pytest.raises(ValueError, match=r"a/w: \(4, 3\) vs config \(4, 2\).*extra: not in"):
    model_init._check_param_shapes(params, expected, "HF checkpoint /m")
