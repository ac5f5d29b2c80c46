"""Tests of the demo pipeline's pieces (the end-to-end run is test_demo_quick.py)."""

from __future__ import annotations

import json
import pathlib

import pytest

from rlhfv_jax import sampler
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data import factory, readers, records, writers
from rlhfv_jax.demo import corpora, datasets, labeler, pipeline, world
from rlhfv_jax.demo import config as demo_config
from rlhfv_jax.stages import config_validation

TOKENIZER = demo_config.TokenIds.of_model(demo_config.demo_model_config())


def _config():
  config = demo_config.default_config()
  config.demo.seeds = (3,)
  return config


def _stage(config, name, root=pathlib.Path("/w")):
  return demo_config.stage_config(config, root, 3, name, pathlib.Path("/w/tok.model"), TOKENIZER)


def test_stage_chain_and_arms():
  config = _config()
  web, vqa, ref = (_stage(config, n) for n in ("sft_web", "sft_vqa", "reference"))
  # The base model: shared by every seed, seeded by demo.base_seed.
  assert (web.stage, web.init.params, web.data.dataset) == ("sft", "checkpoint", "jsonl_sft")
  # ... from the perception stage's checkpoint, the pretrained tower frozen (as CLIP in LLaVA).
  assert web.init.checkpoint_dir == "/w/base/perception"
  assert web.data.source_dir == "/w/base/data/web"
  assert web.seed == config.demo.base_seed == web.data.seed
  assert web.train.num_steps == config.demo.sft_web.steps
  assert web.optim.frozen == vqa.optim.frozen == ("vision_tower",)
  assert (vqa.init.params, vqa.init.checkpoint_dir) == ("checkpoint", "/w/base/sft_web")
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
    stage = _stage(config, arm)
    assert stage.stage == "ddpo" and stage.init.checkpoint_dir == "/w/seed_3/sft_vqa"
    assert (stage.ddpo.gamma, stage.ddpo.normalize) == (gamma, normalize), arm
    assert (stage.data.augmentation, stage.data.use_ref_cache) == (augmentation, cached), arm
    assert stage.data.dataset == "jsonl_preference" and stage.train.num_steps == 0
    assert stage.optim.frozen == ("vision_tower",)
    assert stage.ddpo.beta == config.ddpo.beta
    config_validation.validate_config(stage)
  # The demo config itself is left untouched.
  assert config.ddpo.gamma == 5.0 and config.data.augmentation == "none"


def test_arm_labels_follow_gamma():
  config = _config()
  config.ddpo.gamma = 3.0
  labels = demo_config.model_labels(config)
  assert labels["ddpo_mean"] == "+ DDPO (γ=3, weighted mean)"
  assert set(demo_config.MODELS) | {demo_config.CONTROL} <= set(labels)
  assert labels["ddpo_mean%25"] == "+ DDPO (γ=3, weighted mean), 25% of the pairs"
  assert demo_config.models(config) == (demo_config.CONTROL,) + demo_config.MODELS
  config.demo.control_base = False
  assert demo_config.models(config) == demo_config.MODELS


def test_sweep_stages_control_candidates_and_budgets():
  config = _config()
  control = _stage(config, demo_config.CONTROL)
  web = _stage(config, "sft_web")
  assert control.data.source_dir == "/w/base/data/web_clean"
  assert control.init.checkpoint_dir == web.init.checkpoint_dir == "/w/base/perception"
  assert control.train.num_steps == web.train.num_steps and control.seed == web.seed
  assert control.data.data_dir != web.data.data_dir
  # A VQA candidate: its own data, its steps and learning rate, from the web base.
  config.demo.sweep.vqa_candidates = (dict(replay="none", steps=7, learning_rate=2e-4),)
  candidate = _stage(config, "sft_vqa#0")
  assert candidate.data.source_dir == "/w/seed_3/data/vqa#0"
  assert (candidate.train.num_steps, candidate.optim.learning_rate) == (7, 2e-4)
  assert candidate.init.checkpoint_dir == "/w/base/sft_web"
  # A budget arm: the arm's objective on a subset, reading the full set's reference cache.
  full, part = _stage(config, "ddpo_mean"), _stage(config, "ddpo_mean%25")
  assert part.data.source_dir == "/w/seed_3/feedback_export/preference%25"
  assert (part.ddpo.gamma, part.ddpo.normalize) == (full.ddpo.gamma, full.ddpo.normalize)
  assert part.data.use_ref_cache and part.data.ref_cache_dir == str(
      factory.ref_cache_dir(full))
  assert part.data.data_dir != full.data.data_dir
  config_validation.validate_config(part)


def test_select_vqa_keeps_recall_and_length():
  base = {"recall": 0.9, "avg_words": 30.0}
  m = lambda chair_i, recall, words, chair_s=0.1: dict(chair_i=chair_i, recall=recall,
                                                      avg_words=words, chair_s=chair_s)
  # Candidate 1 hallucinates least but says almost nothing: not a mitigation.
  assert pipeline.select_vqa({0: m(0.05, 0.9, 30), 1: m(0.0, 0.1, 2), 2: m(0.04, 0.85, 26)},
                             base) == 2
  assert pipeline.select_vqa({0: m(0.05, 0.9, 30), 1: m(0.05, 0.9, 30, chair_s=0.05)},
                             base) == 1
  # None keeps the base's recall: the one that keeps most.
  assert pipeline.select_vqa({0: m(0.0, 0.2, 30), 1: m(0.1, 0.5, 30)}, base) == 1


def test_clean_captions_replay_and_budget_subsets(tmp_path):
  config = _config()
  scenes = world.sample_scenes(0, 30, "d")
  images = datasets.render_all(scenes, config.demo.world.image_size)
  base, own = demo_config.SeedPaths(tmp_path / "base"), demo_config.SeedPaths(tmp_path / "s3")
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


@pytest.mark.parametrize("change, match", [
    (lambda c: setattr(c.demo, "seeds", ()), "demo.seeds is empty"),
    (lambda c: setattr(c.demo, "seeds", (1, 1)), "repeats a seed"),
    (lambda c: setattr(c.demo.world, "image_size", 96), "must equal model.vision.image_size"),
    (lambda c: setattr(c.demo.world, "num_eval_scenes", 0), "num_eval_scenes=0"),
    (lambda c: setattr(c.demo.preference, "batch_size", 10_000), "exceeds"),
    (lambda c: setattr(c.ddpo, "gamma", 0.5), "demo stage 'dpo'|gamma=0.5"),
    (lambda c: setattr(c.demo.sft_web, "learning_rate", -1.0),
     "(?s)demo stage 'sft_web'.*learning_rate=-1.0 must be > 0"),
])
def test_validate_rejects(change, match):
  config = _config()
  change(config)
  with pytest.raises(ValueError, match=match):
    demo_config.validate(config)


def test_default_configs_validate():
  demo_config.validate(demo_config.default_config())
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "demo_config", pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for variant in module.VARIANTS:
    demo_config.validate(module.get_config(variant))
  with pytest.raises(ValueError, match="unknown variant"):
    module.get_config("slow")


def test_workdir_belongs_to_one_config(tmp_path):
  config = _config()
  pipeline._check_workdir(config, tmp_path)
  pipeline._check_workdir(config, tmp_path)  # same config: resumes
  config.demo.sft_web.steps += 1
  with pytest.raises(ValueError, match="different config"):
    pipeline._check_workdir(config, tmp_path)


def test_sft_data_is_readable_by_the_project_reader(tmp_path):
  config = _config()
  scenes = world.sample_scenes(0, 20, "d")
  images = datasets.render_all(scenes, config.demo.world.image_size)
  base, own = demo_config.SeedPaths(tmp_path / "base"), demo_config.SeedPaths(tmp_path / "s3")
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
  faithful = corpora.describe(scenes[0].objects, __import__("numpy").random.default_rng(0))
  wrong = "There are nine objects in the image."
  invented = "At the bottom right, there is a large white diamond."
  assert labeler.correct_description(invented, scenes[4]).chosen == ""
  texts = [faithful, wrong, wrong, "", invented]
  sample = CannedSampler(texts, [True, True, False, True, True])
  paths = demo_config.SeedPaths(tmp_path)
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
    datasets.collect_feedback(config, demo_config.SeedPaths(tmp_path), None, sample, scenes, 3)


def test_evaluate_scores_and_logs_every_description(tmp_path):
  config = _config()
  scenes = world.sample_scenes(0, 2, "e")
  texts = [corpora.describe(scenes[0].objects, __import__("numpy").random.default_rng(0)),
           "A blue star."]
  paths = demo_config.SeedPaths(tmp_path)
  result = pipeline.evaluate(config, paths, "m", None, CannedSampler(texts, [True, False]),
                             scenes, {s.scene_id: b"" for s in scenes})
  assert result["chair_s"] == 0.0 and result["unfinished"] == 0.5
  assert result["recall"] == pytest.approx(len(scenes[0].objects) /
                                           (len(scenes[0].objects) + len(scenes[1].objects)))
  logged = [json.loads(l) for l in paths.eval("m").read_text().splitlines()]
  assert [l["response"] for l in logged] == texts and logged[0]["covered"] == len(scenes[0].objects)
