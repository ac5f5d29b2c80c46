"""validate_config: every nonsense case is refused with a message naming the field."""

from __future__ import annotations

import pytest

import config_files
from rlhfv_jax.stages import config_validation, iterate
from rlhfv_jax.stages import defaults
from rlhfv_jax.stages import registry


def valid_config(stage: str = "ddpo"):
  config = defaults.base_config(stage, "tiny")
  config.data.update(data_dir="/data/tfds", tokenizer="/models/tokenizer.model")
  config.init.params = "random"
  config.hallucination.update(pope_dir="/pope", coco_images="/coco/val2014",
                              coco_annotations="/coco/annotations", amber_dir="/amber")
  config.sample.images = "/images"
  config.label.store = "/runs/feedback/annotations.sqlite"
  return config


def problems_of(config, num_devices: int = 4, num_processes: int = 1) -> str:
  with pytest.raises(ValueError) as info:
    config_validation.validate_config(config, num_devices=num_devices,
                                      num_processes=num_processes)
  return str(info.value)


@pytest.mark.parametrize("stage", registry.RUNNER_STAGES)
def test_valid_configs_pass(stage):
  config_validation.validate_config(valid_config(stage), num_devices=4, num_processes=1)


CASES = [
    ("ddpo.gamma", 0.5, "ddpo.gamma=0.5: gamma < 1 weights corrected tokens LESS"),
    ("ddpo.beta", 0.0, "ddpo.beta=0.0 must be > 0"),
    ("ddpo.beta", -0.1, "ddpo.beta=-0.1 must be > 0"),
    ("ddpo.loss_type", "kto", "ddpo.loss_type='kto'"),
    ("ddpo.label_smoothing", 0.5, "ddpo.label_smoothing=0.5 must lie in [0, 0.5)"),
    ("ddpo.segment_mode", "words", "ddpo.segment_mode='words'"),
    ("stage", "rlhf", "stage='rlhf' is not a stage"),
    ("train.global_batch_size", 30, "train.global_batch_size=30 is not divisible by 4 devices "
     "x 1 accumulation steps"),
    ("train.grad_accum_steps", 0, "train.grad_accum_steps=0 must be >= 1"),
    ("train.parallelism", "tp", "train.parallelism='tp'"),
    ("optim.learning_rate", 0.0, "optim.learning_rate=0.0 must be > 0"),
    ("optim.warmup_fraction", 1.0, "optim.warmup_fraction=1.0 must lie in [0, 1)"),
    ("optim.schedule", "step", "optim.schedule='step'"),
    ("optim.max_grad_norm", -1.0, "optim.max_grad_norm=-1.0 must be >= 0"),
    ("optim.b2", 1.0, "optim.b2=1.0 must lie in [0, 1)"),
    ("checkpoint.every_steps", 0, "checkpoint.every_steps=0 must be > 0"),
    ("checkpoint.max_to_keep", 0, "checkpoint.max_to_keep=0 must be >= 1"),
    ("init.params", "scratch", "init.params='scratch'"),
    ("eval.objective", "chair", "eval.objective='chair'"),
    ("data.data_dir", "", "data.data_dir is empty"),
    ("data.tokenizer", "", "data.tokenizer is empty"),
    ("data.augmentation", "random_crop", "config.data.augmentation='random_crop': random "
     "cropping is refused"),
    ("data.augmentation", "flip", "needs config.data.allow_flip=True"),
    ("model.text.num_kv_heads", 3, "text.num_heads=4 is not a multiple of text.num_kv_heads=3"),
    ("train.num_steps", -1, "train.num_steps=-1 must be >= 0"),
]


@pytest.mark.parametrize("field,value,message", CASES, ids=[c[0] + "=" + repr(c[1]) for c in CASES])
def test_nonsense_is_refused_naming_the_field(field, value, message):
  config = valid_config()
  *parents, leaf = field.split(".")
  node = config
  for name in parents:
    node = node[name]
  node[leaf] = value
  assert message in problems_of(config)


def test_batch_divisibility_counts_accumulation_and_processes():
  config = valid_config()
  config.train.update(global_batch_size=8, grad_accum_steps=4)
  assert "8 is not divisible by 4 devices x 4 accumulation steps" in problems_of(config)
  config.train.update(global_batch_size=6, grad_accum_steps=1)
  message = problems_of(config, num_devices=2, num_processes=4)
  assert "train.global_batch_size=6 is not divisible by 4 processes" in message


def test_fsdp_mesh_must_match_devices():
  config = valid_config()
  config.train.parallelism = "fsdp"
  config.train.mesh.update(data=3, fsdp=-1)
  assert "train.mesh data=3 x fsdp=-1 does not match the 4 devices" in problems_of(config)


def test_forward_pass_batch_sizes_fit_the_devices():
  evaluation = valid_config("eval")
  evaluation.eval.batch_size = 6
  assert "eval.batch_size=6 must be a positive multiple of the 4 devices" in problems_of(
      evaluation)
  reference = valid_config("precompute_ref")
  reference.precompute.batch_size = 3
  message = problems_of(reference, num_devices=4, num_processes=2)
  assert "precompute.batch_size=3 must be a positive multiple of the 2 devices of each" in message


def test_hf_and_checkpoint_init_need_their_paths():
  config = valid_config()
  config.init.params = "hf"
  assert "init.params='hf' needs init.hf_checkpoint" in problems_of(config)
  config.init.params = "checkpoint"
  assert "init.params='checkpoint' needs init.checkpoint_dir" in problems_of(config)


def test_random_crop_ablation_is_allowed_by_name():
  config = valid_config()
  config.data.augmentation = "random_crop_ablation"
  config_validation.validate_config(config, num_devices=4, num_processes=1)


def test_all_problems_are_reported_at_once():
  config = valid_config()
  config.ddpo.update(gamma=0.9, beta=0.0)
  config.optim.learning_rate = -1.0
  message = problems_of(config)
  assert message.startswith("invalid config (3 problems):")
  assert message.count("\n  - ") == 3


@pytest.mark.parametrize("family,sizes", [("llava15", ("", "7b", "13b")),
                                          ("gemma3", ("", "4b", "12b", "27b"))])
def test_real_configs_validate_once_their_paths_are_given(family, sizes):
  for size in sizes:
    for variant in ("", "rlhfv_release", "precompute_ref", "eval", "lora"):
      config = config_files.load(f"{family}_ddpo.py", f"{size},{variant}")
      assert config.model.family == family
      config.init.update(hf_checkpoint="/models/llava", checkpoint_dir="/runs/ddpo")
      config.data.update(data_dir="/d", tokenizer="/t")
      config_validation.validate_config(config, num_devices=8, num_processes=1)
      # No size: the architecture follows the checkpoint; a size pins it.
      assert config.init.model_from_checkpoint == (not size)
    sft = config_files.load(f"{family}_vqav2_sft.py", size)
    sft.init.hf_checkpoint = "/models/llava"
    sft.data.update(data_dir="/d", tokenizer="/t")
    config_validation.validate_config(sft, num_devices=8, num_processes=1)
    for variant in ("sample", "label", "export_hf"):
      feedback = config_files.load(f"{family}_feedback.py", f"{variant},{size}")
      assert feedback.stage == variant
      feedback.init.update(hf_checkpoint="/models/llava", checkpoint_dir="/runs/ddpo")
      feedback.data.tokenizer = "/t"
      feedback.sample.images = "/images"
      feedback.label.store = "/runs/feedback/annotations.sqlite"
      config_validation.validate_config(feedback, num_devices=8, num_processes=1)
    rounds = config_files.load(f"{family}_iterate.py", size)
    assert (rounds.stage, rounds.iterate.rounds, rounds.sample.num_samples) == ("iterate", 4, 10)
    rounds.init.hf_checkpoint = "/models/llava"
    rounds.data.tokenizer = "/t"
    rounds.sample.images = "/images"
    iterate.validate(rounds)
    halbench = config_files.load(f"{family}_hallucination_eval.py", size)
    assert halbench.stage == "hallucination_eval" and halbench.model.family == family
  # Without the paths the messages say what to set.
  message = problems_of(config_files.load(f"{family}_ddpo.py", sizes[1]), num_devices=8)
  for field in ("init.hf_checkpoint", "data.data_dir", "data.tokenizer"):
    assert field in message


def test_paper_and_release_hyperparameters():
  paper = config_files.load("llava15_ddpo.py", "7b")
  assert (paper.ddpo.beta, paper.ddpo.gamma, paper.ddpo.normalize) == (0.5, 5.0, True)
  assert (paper.optim.learning_rate, paper.optim.warmup_fraction) == (5e-7, 0.1)
  assert (paper.train.global_batch_size, paper.train.num_epochs) == (32, 7.0)
  assert paper.data.augmentation == "none"
  release = config_files.load("llava15_ddpo.py", "13b,rlhfv_release")
  assert (release.ddpo.gamma, release.ddpo.beta, release.ddpo.normalize) == (1.1, 0.1, False)
  assert release.ddpo.segment_mode == "rlhfv" and not release.ddpo.check_empty_responses
  assert release.model.text.hidden_size == 5120
  assert config_files.load("llava15_ddpo.py", "rlhfv_release").ddpo.gamma == 1.1
  for bad in ("7b,fast", "7b,eval,extra", "70b"):
    with pytest.raises(ValueError, match="is not one of size in"):
      config_files.load("llava15_ddpo.py", bad)


def test_hallucination_eval_config_validates_once_its_files_are_given():
  for size in ("", "7b"):
    config = config_files.load("llava15_hallucination_eval.py", size)
    message = problems_of(config, num_devices=8)
    for field in ("init.hf_checkpoint", "data.tokenizer", "hallucination.pope_dir",
                  "hallucination.coco_images", "hallucination.coco_annotations",
                  "hallucination.amber_dir"):
      assert field in message, field
    assert "data.data_dir" not in message  # it reads no TFDS split
    config.init.hf_checkpoint = "/models/llava"
    config.data.tokenizer = "/t"
    config.hallucination.update(pope_dir="/p", coco_images="/c", coco_annotations="/a",
                                amber_dir="/amber")
    config_validation.validate_config(config, num_devices=8, num_processes=1)
