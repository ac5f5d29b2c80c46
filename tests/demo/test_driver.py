"""Tests of the demo's driver and studies with training and sampling stubbed: which runs
the runner gets, in which order and with which settings, and what each study writes
(the run with real training is test_demo_quick.py)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from rlhfv_jax import sampler
from rlhfv_jax.demo import (ablation, context, corpora, datasets, driver, runs, settings,
                            sweep, world)
from rlhfv_jax.stages import runner


def _config():
  config = settings.default_config()
  config.demo.seeds = (3,)
  return config


class CannedSampler:
  """Stands in for `sampler.Sampler`: returns fixed texts."""

  def __init__(self, texts, finished):
    self.texts, self.finished = texts, finished

  def __call__(self, params, images, prompts, **kwargs):
    return sampler.Samples(self.texts, self.finished)


def test_workdir_belongs_to_one_config(tmp_path):
  config = _config()
  driver._check_workdir(config, tmp_path)
  driver._check_workdir(config, tmp_path)  # same config: resumes
  config.demo.sft_web.steps += 1
  with pytest.raises(ValueError, match="different config"):
    driver._check_workdir(config, tmp_path)


def test_evaluate_scores_and_logs_every_description(tmp_path):
  config = _config()
  scenes = world.sample_scenes(0, 2, "e")
  texts = [corpora.describe(scenes[0].objects, np.random.default_rng(0)), "A blue star."]
  paths = runs.SeedPaths(tmp_path)
  result = context.evaluate(config, paths, "m", None, CannedSampler(texts, [True, False]),
                            scenes, {s.scene_id: b"" for s in scenes})
  assert result["chair_s"] == 0.0 and result["unfinished"] == 0.5
  assert result["recall"] == pytest.approx(len(scenes[0].objects) /
                                           (len(scenes[0].objects) + len(scenes[1].objects)))
  logged = [json.loads(l) for l in paths.eval("m").read_text().splitlines()]
  assert [l["response"] for l in logged] == texts and logged[0]["covered"] == len(scenes[0].objects)


def test_select_vqa_keeps_recall_and_length():
  base = {"recall": 0.9, "avg_words": 30.0}
  m = lambda chair_i, recall, words, chair_s=0.1: dict(chair_i=chair_i, recall=recall,
                                                      avg_words=words, chair_s=chair_s)
  # Candidate 1 hallucinates least but says almost nothing: not a mitigation.
  assert sweep.select_vqa({0: m(0.05, 0.9, 30), 1: m(0.0, 0.1, 2), 2: m(0.04, 0.85, 26)},
                          base) == 2
  assert sweep.select_vqa({0: m(0.05, 0.9, 30), 1: m(0.05, 0.9, 30, chair_s=0.05)},
                          base) == 1
  # None keeps the base's recall: the one that keeps most.
  assert sweep.select_vqa({0: m(0.0, 0.2, 30), 1: m(0.1, 0.5, 30)}, base) == 1


@pytest.fixture
def stubbed(monkeypatch):
  """Training, sampling and perception pretraining replaced; returns the runner's calls
  as (workdir, runner config)."""
  scenes = {}  # image bytes -> scene, so that the stand-in sampler can describe it
  render_all = datasets.render_all

  def recording_render_all(scene_list, image_size):
    images = render_all(scene_list, image_size)
    scenes.update({images[s.scene_id]: s for s in scene_list})
    return images

  class SceneSampler:
    """Describes each scene with one mismatch, so that the oracle corrects every one."""

    def __call__(self, params, images, prompts, **kwargs):
      texts = [corpora.web_captions([scenes[image]], i, 1.0, {"extra_object": 1.0})[0].response
               for i, image in enumerate(images)]
      return sampler.Samples(texts, [True] * len(texts))

  calls = []

  def run(stage, workdir):
    calls.append((workdir, stage))
    return f"params of {workdir}"

  monkeypatch.setattr(datasets, "render_all", recording_render_all)
  monkeypatch.setattr(runner, "run", run)
  monkeypatch.setattr(sampler.Sampler, "from_config", staticmethod(lambda c: SceneSampler()))
  monkeypatch.setattr(driver, "pretrain_perception", lambda ctx, paths: {"val_accuracy": {}})
  # The suite's later tests must not inherit a compilation cache in a deleted tmp dir.
  monkeypatch.setattr(driver, "_enable_compilation_cache", lambda workdir: None)
  return calls


def _tiny(study):
  config = settings.default_config()
  config.demo.update(seeds=(0, 1), study=study)
  config.demo.world.update(num_train_scenes=24, num_feedback_scenes=8, num_eval_scenes=4)
  config.demo.validation.num_scenes = 4
  config.demo.preference.batch_size = 4  # the suite's 4 devices
  config.demo.sweep.update(budgets=(50, 100), vqa_candidates=(
      dict(replay="none", steps=3), dict(replay="web", steps=5, diagnostic=True)))
  return config


def test_both_studies_run_one_chain_per_seed(tmp_path, stubbed):
  config = _tiny("ablation")
  summary = driver.run(config, str(tmp_path / "a"))
  assert len(summary["timings"]) == driver.num_base_stages(config) + ablation.num_stages(
      config)
  chain = ["sft_vqa", "reference", "dpo", "ddpo_mean", "ddpo_sum", "ddpo_crop"]
  assert [str(pathlib.Path(w).relative_to(tmp_path / "a")) for w, _ in stubbed] == (
      ["base/sft_web", "base/sft_web_clean"]
      + [f"seed_{s}/{name}" for s in (0, 1) for name in chain])
  assert [c.stage for _, c in stubbed[2:8]] == ["sft", "precompute_ref"] + ["ddpo"] * 4
  assert (tmp_path / "a" / "ablation.md").is_file()
  assert set(summary["feedback"]) == {"0", "1"} and summary["feedback"]["0"]["corrected"] > 0

  stubbed.clear()
  config = _tiny("sweep")
  summary = driver.run(config, str(tmp_path / "s"))
  assert len(summary["timings"]) == driver.num_base_stages(config) + sweep.num_stages(config)
  budget_runs = [f"{arm}%{b}" for arm in config.demo.sweep.arms for b in (50, 100)]
  assert [str(pathlib.Path(w).relative_to(tmp_path / "s")) for w, _ in stubbed] == (
      ["base/sft_web", "base/sft_web_clean", "base/sft_web",  # the last: validation
       "seed_0/sft_vqa#0", "seed_0/sft_vqa#1"]
      + [f"seed_{s}/{name}" for s in (0, 1) for name in ["sft_vqa", "reference"] + budget_runs])
  # The only eligible candidate (1 is a diagnostic) is every seed's VQA stage.
  assert summary["vqa_chosen"] == 0
  vqa = [c for w, c in stubbed if w.endswith("/sft_vqa")]
  assert [c.train.num_steps for c in vqa] == [3, 3]
  assert [c.data.source_dir.endswith("/data/vqa") for c in vqa] == [True, True]
  assert set(summary["per_seed"]["1"]) == {"metrics", "feedback", "budgets"}
  pairs = summary["per_seed"]["1"]["feedback"]["corrected"]
  assert summary["per_seed"]["1"]["budgets"] == {50: round(pairs / 2), 100: pairs}
  assert (tmp_path / "s" / "sweep.md").is_file()
