"""The one way a stage runs (`runner.prepare` / `runner.run`) and the config files' one
argument parser (`defaults.parse_arg`)."""

from __future__ import annotations

import json

import pytest

import config_files
from rlhfv_jax.model.llava15.config import SIZES
from rlhfv_jax.stages import defaults
from rlhfv_jax.stages import registry
from rlhfv_jax.stages import runner


def test_the_resolved_config_is_in_the_workdir_before_the_stage_starts(tmp_path, monkeypatch):
  seen = {}

  def stage(config, workdir):  # what a stage finds when it starts
    seen["file"] = json.loads((tmp_path / "run" / "config.json").read_text())
    return "result"

  monkeypatch.setitem(registry.STAGES, "probe", registry.Stage(
      "a test stage", run=f"{__name__}:unused", validate=f"{__name__}:unused"))
  monkeypatch.setattr(registry.Stage, "load", lambda self: (lambda config: None, stage))
  config = config_files.load("tiny_cpu.py", "ddpo")
  with config.unlocked():
    config.stage = "probe"
  assert runner.run(config, str(tmp_path / "run")) == "result"
  assert seen["file"]["stage"] == "probe"
  assert seen["file"]["model"] == json.loads(json.dumps(config.model.to_dict()))


def test_an_invalid_config_writes_nothing(tmp_path):
  config = config_files.load("tiny_cpu.py", "ddpo")
  config.ddpo.gamma = 0.5
  with pytest.raises(ValueError, match="ddpo.gamma=0.5"):
    runner.prepare(config)
  assert not tmp_path.joinpath("run").exists()


def test_parse_arg_takes_parts_in_any_order_and_by_name():
  choices = dict(size=SIZES, variant=("eval", "rlhfv_release"))
  parse = lambda arg: defaults.parse_arg(arg, "configs/x.py", **choices).to_dict()
  assert parse("") == {"size": "", "variant": ""}
  assert parse("13b,eval") == parse("eval,13b") == {"size": "13b", "variant": "eval"}
  assert parse("variant=rlhfv_release") == {"size": "", "variant": "rlhfv_release"}
  for bad, message in (("70b", r"'70b' is not one of size in"), ("eval,eval", "variant given twice"),
                       ("size=eval", r"'size=eval' is not one of")):
    with pytest.raises(ValueError, match=message):
      parse(bad)


@pytest.mark.parametrize("name,arg,stage,size", [
    ("llava15_ddpo.py", "13b,eval", "eval", "13b"),
    ("llava15_ddpo.py", "precompute_ref", "precompute_ref", ""),
    ("llava15_feedback.py", "export_hf", "export_hf", ""),
    ("llava15_feedback.py", "7b", "sample", "7b"),
    ("llava15_vqav2_sft.py", "", "sft", ""),
    ("llava15_hallucination_eval.py", "13b", "hallucination_eval", "13b"),
    ("llava15_ddpo.py", "lora", "ddpo", ""),
    ("llava15_ddpo.py", "13b,rlhfv_release,lora", "ddpo", "13b"),
    ("llava15_vqav2_sft.py", "lora,7b", "sft", "7b"),
])
def test_config_files_read_their_argument(name, arg, stage, size):
  config = config_files.load(name, arg)
  assert config.stage == stage
  assert config.init.model_from_checkpoint == (not size)
  if size:
    assert config.model.text.hidden_size == defaults.base_config(stage, size).model.text.hidden_size
  with pytest.raises(ValueError, match=f"configs/{name}:bogus"):
    config_files.load(name, "bogus")
  lora = "lora" in arg.split(",")
  assert config.model.lora.rank == (defaults.RECIPES["llava15"].lora["rank"] if lora else 0)
  assert config.model.param_dtype == ("bfloat16" if lora else "float32")
  if lora and stage == "ddpo":  # the reference is the base, inside the step
    assert not config.data.use_ref_cache
