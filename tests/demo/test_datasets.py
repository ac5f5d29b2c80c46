"""Tests of the demo's datasets: web captions, VQA data, budget subsets and the feedback
loop through the annotation store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlhfv_jax import sampler
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data import readers, records, writers
from rlhfv_jax.demo import corpora, datasets, labeler, settings, world
from rlhfv_jax.demo.runs import SeedPaths


def _config():
  config = settings.default_config()
  config.demo.seeds = (3,)
  return config


def test_clean_captions_replay_and_budget_subsets(tmp_path):
  config = _config()
  scenes = world.sample_scenes(0, 30, "d")
  images = datasets.render_all(scenes, config.demo.world.image_size)
  base, own = SeedPaths(tmp_path / "base"), SeedPaths(tmp_path / "s3")
  clean = datasets.write_web_data(config, base, scenes, images, clean=True)
  noisy = datasets.write_web_data(config, base, scenes, images)
  assert clean["web_clean_captions_mismatched"] == 0 < noisy["web_captions_mismatched"]
  errors = records.ErrorLog("raise")
  clean_rows = list(readers.read_jsonl(base.data("web_clean"), "train", "sft", errors))
  assert all(labeler.correct_description(r.answer, s) is None
             for r, s in zip(clean_rows, scenes))
  config.demo.sweep.vqa_candidates = (dict(replay="none"),)
  stats = datasets.write_vqa_data(config, own, scenes, images, seed=3, candidate=0)
  assert stats["vqa_stage_replayed_captions"] == 0
  vqa = list(readers.read_jsonl(own.data("vqa#0"), "train", "sft", errors))
  assert {r.origin["source"].split("/")[0] for r in vqa} == {"vqa"}
  # The diagnostics: the replayed captions alone; VQA pairs without presence questions.
  config.demo.sweep.vqa_candidates = (dict(replay="web", vqa_pairs=False),
                                      dict(replay="web", presence_questions=False))
  for k in (0, 1):
    datasets.write_vqa_data(config, own, scenes, images, seed=3, candidate=k)
  sources = [{r.origin["source"] for r in readers.read_jsonl(own.data(f"vqa#{k}"), "train",
                                                              "sft", errors)} for k in (0, 1)]
  assert sources[0] == {"web_caption"}
  assert "vqa/presence" not in sources[1] and "vqa/count" in sources[1]
  # Budgets: nested subsets of the feedback pairs, each a readable preference dataset.
  pairs = [records.make_preference_record(dict(
      id=f"p{i}", image=images[scenes[i].scene_id], question="Describe.",
      chosen=f"A red circle {i}.", rejected=f"A blue circle {i}.")) for i in range(20)]
  writers.write_jsonl(own.feedback_export / "preference", pairs)
  sizes = datasets.write_budget_subsets(own, (25, 50, 100), seed=3)
  assert sizes == {25: 5, 50: 10, 100: 20}
  ids = {b: {r.id for r in readers.read_jsonl(own.feedback_export / f"preference%{b}",
                                               "train", "preference", errors)}
         for b in (25, 50, 100)}
  assert ids[25] < ids[50] < ids[100] == {p.id for p in pairs}


def test_sft_data_is_readable_by_the_project_reader(tmp_path):
  config = _config()
  scenes = world.sample_scenes(0, 20, "d")
  images = datasets.render_all(scenes, config.demo.world.image_size)
  base, own = SeedPaths(tmp_path / "base"), SeedPaths(tmp_path / "s3")
  web_stats = datasets.write_web_data(config, base, scenes, images)
  stats = datasets.write_vqa_data(config, own, scenes, images, seed=3)
  assert web_stats["web_captions"] == 20
  assert stats["vqa_pairs"] == 20 * config.demo.corpus.vqa_per_scene
  errors = records.ErrorLog("raise")
  web = list(readers.read_jsonl(base.data("web"), "train", "sft", errors))
  vqa = list(readers.read_jsonl(own.data("vqa"), "train", "sft", errors))
  assert len(web) == 20
  assert sum(bool(r.origin["mismatches"]) for r in web) == web_stats["web_captions_mismatched"]
  assert web[0].image == world.encode_png(world.render(scenes[0], config.demo.world.image_size))
  # The VQA stage: every VQA pair plus replayed captions making up the configured share.
  replayed = [r for r in vqa if r.origin["source"] == "web_caption"]
  assert len(vqa) == stats["vqa_pairs"] + len(replayed)
  assert len(replayed) == stats["vqa_stage_replayed_captions"] > 0
  assert len(replayed) / len(vqa) == pytest.approx(config.demo.corpus.vqa_stage_caption_share,
                                                   abs=0.02)
  web_by_id = {r.id: r for r in web}
  assert all(web_by_id[r.id] == r for r in replayed)


class CannedSampler:
  """Stands in for `sampler.Sampler`: returns fixed texts and records the call."""

  def __init__(self, texts, finished):
    self.texts, self.finished, self.calls = texts, finished, []

  def __call__(self, params, images, prompts, **kwargs):
    self.calls.append(dict(kwargs, n=len(images), prompts=list(prompts)))
    return sampler.Samples(self.texts, self.finished)


def test_collect_feedback_writes_only_corrected_finished_samples(tmp_path):
  config = _config()
  config.demo.preference.batch_size = 1
  scenes = world.sample_scenes(0, 4, "f") + [
      world.Scene("f-red", (world.SceneObject("circle", "red", "large", 0),))]
  faithful = corpora.describe(scenes[0].objects, np.random.default_rng(0))
  wrong = "There are nine objects in the image."
  invented = "At the bottom right, there is a large white diamond."
  assert labeler.correct_description(invented, scenes[4]).chosen == ""
  texts = [faithful, wrong, wrong, "", invented]
  sample = CannedSampler(texts, [True, True, False, True, True])
  paths = SeedPaths(tmp_path)
  stats = datasets.collect_feedback(config, paths, None, sample, scenes, seed=3)
  assert stats == {"samples": 5, "unfinished": 2, "clean": 1, "emptied": 1, "corrected": 1,
                   "edits": {"count": 1}}
  assert sample.calls[0]["temperature"] == config.demo.sampling.temperature
  # The finished, non-empty descriptions went into the store; the oracle annotated each.
  store = store_lib.AnnotationStore(paths.annotations)
  verdicts = {a.item_id: (a.annotator, a.verdict) for a in store.annotations()}
  assert verdicts == {f"fb-3-{scenes[0].scene_id}": ("oracle", "no_hallucination"),
                      f"fb-3-{scenes[1].scene_id}": ("oracle", "corrected"),
                      f"fb-3-{scenes[4].scene_id}": ("oracle", "unclear")}
  # The DDPO data is the store's export: the one correction.
  (record,) = readers.read_jsonl(paths.feedback_export / "preference", "train", "preference",
                                 records.ErrorLog("raise"))
  assert record.rejected == wrong and record.id == f"fb-3-{scenes[1].scene_id}@oracle"
  assert record.chosen == labeler.correct_description(wrong, scenes[1]).chosen
  assert record.origin["annotator"] == "oracle" and not record.has_spans  # the token diff
  assert record.image == datasets.render_all(
      scenes[1:2], config.demo.world.image_size)[scenes[1].scene_id]
  (clean,) = readers.read_jsonl(paths.feedback_export / "no_hallucination", "train", "sft",
                                records.ErrorLog("raise"))
  assert clean.answer == faithful
  samples = [json.loads(l) for l in paths.feedback_samples.read_text().splitlines()]
  assert [s["finished"] for s in samples] == [True, True, False, True, True]
  assert [s["verdict"] for s in samples] == ["no_hallucination", "corrected", None, None,
                                             "unclear"]


def test_too_little_feedback_is_an_error(tmp_path):
  config = _config()
  scenes = world.sample_scenes(0, 2, "f")
  sample = CannedSampler(["There are nine objects."] * 2, [True, True])
  with pytest.raises(RuntimeError, match="fewer than one preference batch"):
    datasets.collect_feedback(config, SeedPaths(tmp_path), None, sample, scenes, 3)
