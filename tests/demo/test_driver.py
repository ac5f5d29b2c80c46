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


def _m(chair_i, recall, words, chair_s=0.1):
  return dict(chair_i=chair_i, recall=recall, avg_words=words, chair_s=chair_s)


def test_select_keeps_recall_and_length():
  start = {"recall": 0.9, "avg_words": 30.0, "chair_i": 0.2, "chair_s": 0.4}
  # Candidate 1 hallucinates least but says almost nothing: not a mitigation.
  assert sweep.select({0: _m(0.05, 0.9, 30), 1: _m(0.0, 0.1, 2), 2: _m(0.04, 0.85, 26)},
                      start) == 2
  assert sweep.select({0: _m(0.05, 0.9, 30), 1: _m(0.05, 0.9, 30, chair_s=0.05)},
                      start) == 1
  # None keeps the start's recall: the one that keeps most.
  assert sweep.select({0: _m(0.0, 0.2, 30), 1: _m(0.1, 0.5, 30)}, start) == 1


def test_choose_pools_the_seeds_and_counts_each_seeds_pick():
  start = {"recall": 0.9, "avg_words": 30.0, "chair_i": 0.2, "chair_s": 0.4}
  # Candidate 0 wins two seeds narrowly; candidate 1 loses them narrowly and wins the
  # third by far: on the seeds' mean 1 is lower (0.04 vs 0.0533).
  groups = {"0": ({0: _m(0.05, 0.9, 30), 1: _m(0.06, 0.9, 30)}, start),
            "1": ({0: _m(0.05, 0.9, 30), 1: _m(0.06, 0.9, 30)}, start),
            "2": ({0: _m(0.06, 0.9, 30), 1: _m(0.0, 0.9, 30)}, start)}
  choice = sweep.choose(groups)
  assert choice.chosen == 1 and choice.wins == {0: 2, 1: 1}
  assert choice.picks == {"0": 0, "1": 0, "2": 1}
  assert choice.to_json() == {"chosen": 1, "wins": {"0": 2, "1": 1},
                              "picks": {"0": 0, "1": 0, "2": 1}}
  # NaN runs are left out of the mean (a model that mentions nothing has no CHAIR_i):
  # candidate 1's mean is then 0.06; a candidate no group picks still has its count, 0.
  groups["2"][0][1]["chair_i"] = float("nan")
  choice = sweep.choose(groups)
  assert choice.chosen == 0 and choice.wins[0] >= 2


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
  config.demo.update(seeds=(0, 1), study=study, control_base=True)
  config.demo.world.update(num_train_scenes=24, num_feedback_scenes=8, num_eval_scenes=4)
  config.demo.validation.num_scenes = 4
  config.demo.preference.batch_size = 4  # the suite's 4 devices
  config.demo.sweep.update(budgets=(50, 100), vqa_candidates=(
      dict(replay="none", steps=3), dict(replay="web", steps=5, diagnostic=True)),
      schedules=(dict(num_epochs=1.0, learning_rate=1e-4),
                 dict(num_epochs=0.5, learning_rate=3e-4)))
  return config


def test_both_studies_run_one_chain_per_seed(tmp_path, stubbed):
  config = _tiny("ablation")
  summary = driver.run(config, str(tmp_path / "a"))
  assert len(summary["timings"]) == driver.num_shared_stages(config) + ablation.num_stages(
      config)
  chain = ["sft_web", "sft_web_clean", "sft_vqa", "reference", "dpo", "ddpo_mean",
           "ddpo_sum", "ddpo_crop"]
  assert [str(pathlib.Path(w).relative_to(tmp_path / "a")) for w, _ in stubbed] == [
      f"seed_{s}/{name}" for s in (0, 1) for name in chain]
  assert [c.stage for _, c in stubbed[:8]] == ["sft"] * 3 + ["precompute_ref"] + ["ddpo"] * 4
  # Every model is trained per seed, the bases included; they read the shared captions.
  assert [c.seed for _, c in stubbed] == [0] * 8 + [1] * 8
  assert {c.data.source_dir for _, c in stubbed if c.stage == "sft"} >= {
      str(tmp_path / "a" / "shared" / "data" / "web")}
  assert (tmp_path / "a" / "ablation.md").is_file()
  assert set(summary["models"]["sft_web"]["per_seed"]) == {"0", "1"}
  assert set(summary["feedback"]) == {"0", "1"} and summary["feedback"]["0"]["corrected"] > 0

  stubbed.clear()
  config = _tiny("sweep")
  summary = driver.run(config, str(tmp_path / "s"))
  assert len(summary["timings"]) == driver.num_shared_stages(config) + sweep.num_stages(config)
  schedule_runs = [f"{arm}#{k}" for arm in config.demo.sweep.arms for k in (0, 1)]
  budget_runs = [f"{arm}%{b}" for arm in config.demo.sweep.arms for b in (50, 100)]
  assert [str(pathlib.Path(w).relative_to(tmp_path / "s")) for w, _ in stubbed] == (
      [f"seed_{s}/{name}" for s in (0, 1)  # the last sft_web: validation, resumed
       for name in ["sft_web", "sft_web_clean", "sft_web", "sft_vqa#0", "sft_vqa#1"]]
      + [f"seed_{s}/{name}" for s in (0, 1) for name in ["sft_vqa", "reference"] + schedule_runs]
      + [f"seed_{s}/{name}" for s in (0, 1) for name in budget_runs])
  # The only eligible candidate (1 is a diagnostic) is every seed's VQA stage.
  assert summary["vqa"]["chosen"] == 0 and summary["vqa"]["wins"] == {"0": 2}
  chosen = summary["schedule"]["chosen"]
  assert sum(summary["schedule"]["wins"].values()) == 4  # 2 seeds x 2 arms
  schedule = config.demo.sweep.schedules[chosen]
  for workdir, stage in stubbed:
    if "%" in workdir:  # the budget runs train with the chosen schedule
      assert stage.train.num_epochs == schedule["num_epochs"]
      assert stage.optim.learning_rate == schedule["learning_rate"]
  metrics = summary["metrics"]["0"]
  assert {"sft_web~T", "sft_web_clean~T", "dpo#1@val", "sft_vqa#0@val"} <= set(metrics)
  for name in ("sweep.md", "sweep.csv", "sweep_differences.csv", "sweep.png"):
    assert (tmp_path / "s" / name).is_file(), name
  text = (tmp_path / "s" / "sweep.md").read_text()
  assert "Co-occurring share" in text and "wins 2/2" in text
  vqa = [c for w, c in stubbed if w.endswith("/sft_vqa")]
  assert [c.train.num_steps for c in vqa] == [3, 3]  # the chosen candidate's settings
  assert [c.data.source_dir.endswith("/data/vqa") for c in vqa] == [True, True]
  pairs = summary["feedback"]["1"]["corrected"]
  assert summary["budgets"]["1"] == {50: round(pairs / 2), 100: pairs}
