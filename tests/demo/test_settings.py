"""Tests of the demo's config: each run's runner config and the validation of the whole."""

from __future__ import annotations

import logging
import pathlib

import pytest

from rlhfv_jax.data import factory
from rlhfv_jax.demo import runs, settings
from rlhfv_jax.demo.runs import Run
from rlhfv_jax.stages import config_validation

TOKENIZER = settings.TokenIds.of_model(settings.demo_model_config())


def _config():
  config = settings.default_config()
  config.demo.seeds = (3,)
  return config


def _stage(config, run, root=pathlib.Path("/w")):
  return settings.stage_config(config, root, 3, run, pathlib.Path("/w/tok.model"), TOKENIZER)


def test_stage_chain_and_arms():
  config = _config()
  web, vqa, ref = (_stage(config, Run(s)) for s in ("sft_web", "sft_vqa", "reference"))
  # The base model: trained per seed (its init and data order), on the shared captions ...
  assert (web.stage, web.init.params, web.data.dataset) == ("sft", "checkpoint", "jsonl_sft")
  # ... from the shared perception checkpoint, the pretrained tower frozen (as CLIP).
  assert web.init.checkpoint_dir == "/w/shared/perception"
  assert web.data.source_dir == "/w/shared/data/web"
  assert web.data.data_dir == "/w/shared/tfds/web"  # built once for every seed
  assert web.seed == 3 == web.data.seed
  assert web.train.num_steps == config.demo.sft_web.steps
  assert web.optim.frozen == vqa.optim.frozen == ("vision_tower",)
  assert (vqa.init.params, vqa.init.checkpoint_dir) == ("checkpoint", "/w/seed_3/sft_web")
  assert vqa.data.source_dir == "/w/seed_3/data/vqa" and vqa.seed == 3
  # Both SFT sources are `jsonl_sft` datasets: each needs its own built data dir, or the
  # VQA stage would read the web captions built first.
  assert len({web.data.data_dir, vqa.data.data_dir, ref.data.data_dir}) == 3
  assert ref.stage == "precompute_ref" and ref.init.checkpoint_dir == "/w/seed_3/sft_vqa"
  want = {  # arm -> (gamma, normalize, augmentation, reference from the cache)
      "dpo": (1.0, True, "none", True),
      "ddpo_mean": (config.ddpo.gamma, True, "none", True),
      "ddpo_sum": (config.ddpo.gamma, False, "none", True),
      "ddpo_crop": (config.ddpo.gamma, config.ddpo.normalize, "random_crop_ablation", False),
  }
  for arm, (gamma, normalize, augmentation, cached) in want.items():
    stage = _stage(config, Run(arm))
    assert stage.stage == "ddpo" and stage.init.checkpoint_dir == "/w/seed_3/sft_vqa"
    assert (stage.ddpo.gamma, stage.ddpo.normalize) == (gamma, normalize), arm
    assert (stage.data.augmentation, stage.data.use_ref_cache) == (augmentation, cached), arm
    assert stage.data.dataset == "jsonl_preference" and stage.train.num_steps == 0
    assert stage.optim.frozen == ("vision_tower",)
    assert stage.ddpo.beta == config.ddpo.beta
    config_validation.validate_config(stage)
  # The demo config itself is left untouched.
  assert config.ddpo.gamma == 5.0 and config.data.augmentation == "none"


def test_sweep_stages_control_candidates_schedules_and_budgets():
  config = _config()
  control = _stage(config, Run(runs.CONTROL))
  web = _stage(config, Run("sft_web"))
  assert control.data.source_dir == "/w/shared/data/web_clean"
  assert control.init.checkpoint_dir == web.init.checkpoint_dir == "/w/shared/perception"
  assert control.train.num_steps == web.train.num_steps and control.seed == web.seed
  assert control.data.data_dir != web.data.data_dir
  # A VQA candidate: its own data, its steps and learning rate, from the web base.
  config.demo.sweep.vqa_candidates = (dict(replay="none", steps=7, learning_rate=2e-4),)
  candidate = _stage(config, Run("sft_vqa", candidate=0))
  assert candidate.data.source_dir == "/w/seed_3/data/vqa#0"
  assert (candidate.train.num_steps, candidate.optim.learning_rate) == (7, 2e-4)
  assert candidate.init.checkpoint_dir == "/w/seed_3/sft_web"
  # A schedule candidate: the arm on the full feedback with its epochs and learning rate.
  config.demo.sweep.schedules = (dict(num_epochs=0.5, learning_rate=3e-5),)
  scheduled = _stage(config, Run("dpo", candidate=0))
  assert (scheduled.train.num_epochs, scheduled.optim.learning_rate) == (0.5, 3e-5)
  assert scheduled.data.source_dir == "/w/seed_3/feedback_export/preference"
  assert scheduled.ddpo.gamma == 1.0 and scheduled.init.checkpoint_dir == "/w/seed_3/sft_vqa"
  assert _stage(config, Run("dpo")).train.num_epochs == config.demo.preference.num_epochs
  # A budget arm: the arm's objective on a subset, reading the full set's reference cache.
  full, part = _stage(config, Run("ddpo_mean")), _stage(config, Run("ddpo_mean", budget=25))
  assert part.data.source_dir == "/w/seed_3/feedback_export/preference%25"
  assert (part.ddpo.gamma, part.ddpo.normalize) == (full.ddpo.gamma, full.ddpo.normalize)
  assert part.data.use_ref_cache and part.data.ref_cache_dir == str(
      factory.ref_cache_dir(full))
  assert part.data.data_dir != full.data.data_dir
  config_validation.validate_config(part)


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c.demo, "seeds", ()), "demo.seeds is empty"),
    (lambda c: setattr(c.demo, "seeds", (1, 1)), "repeats a seed"),
    (lambda c: setattr(c.demo.world, "image_size", 96), "must equal model.vision.image_size"),
    (lambda c: setattr(c.demo.world, "num_eval_scenes", 0), "num_eval_scenes=0"),
    (lambda c: setattr(c.demo.preference, "batch_size", 10_000), "exceeds"),
    (lambda c: setattr(c.ddpo, "gamma", 0.5), "demo stage 'dpo'|gamma=0.5"),
    (lambda c: setattr(c.demo.sft_web, "learning_rate", -1.0),
     "(?s)demo stage 'sft_web'.*learning_rate=-1.0 must be > 0"),
    (lambda c: setattr(c.demo.sweep, "schedules", (dict(num_epochs=1.0, steps=3),)),
     r"demo.sweep.schedules\[0\] sets \['steps'\]"),
    (lambda c: c.demo.update(study="sweep", control_base=False), "needs demo.control_base"),
])
def test_validate_rejects(change, match):
  config = _config()
  change(config)
  with pytest.raises(ValueError, match=match):
    settings.validate(config)


def test_default_configs_validate():
  settings.validate(settings.default_config())
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "demo_config", pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for variant in ("",) + module.VARIANTS:
    settings.validate(module.get_config(variant))
  with pytest.raises(ValueError, match="'slow' is not one of variant in"):
    module.get_config("slow")


def test_the_crop_warning_comes_with_the_crop_arms_data(caplog):
  """Validating every run up front is silent; the warning comes when the crop arm's
  training data is built."""
  config = _config()
  with caplog.at_level(logging.WARNING):
    settings.validate(config)
  assert not [r for r in caplog.records if "ABLATION" in r.getMessage()]
  crop = _stage(config, Run("ddpo_crop"))
  with caplog.at_level(logging.WARNING):
    factory.make_preprocessor(crop, factory.ModelFacts.from_config(crop), augment=False)
  assert not [r for r in caplog.records if "ABLATION" in r.getMessage()]
  with caplog.at_level(logging.WARNING):
    factory.make_preprocessor(crop, factory.ModelFacts.from_config(crop))
  assert [r for r in caplog.records
          if "ABLATION" in r.getMessage() and r.levelno == logging.WARNING]
