"""The demo's datasets, written in the project's JSONL layout (`data.writers`): web
captions for the base model, VQA pairs (+ replayed captions) for VQA SFT, and the
feedback pairs the oracle labeler makes from sampled descriptions.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Sequence

import jax
import numpy as np

from rlhfv_jax import sampler
from rlhfv_jax.annotate import export as export_lib
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data import readers, records, writers
from rlhfv_jax.demo import corpora, labeler, runs, settings, world
from rlhfv_jax.demo.runs import SeedPaths


def render_all(scenes: Sequence[world.Scene], image_size: int) -> dict[str, bytes]:
  """PNG bytes per scene id."""
  return {s.scene_id: world.encode_png(world.render(s, image_size)) for s in scenes}


def _sft_records(examples: Sequence[corpora.TextExample], prefix: str,
                 images: dict[str, bytes]) -> list[records.SFTRecord]:
  return [records.SFTRecord(id=f"{prefix}-{i:06d}", image=images[e.scene_id],
                            question=e.prompt, answer=e.response,
                            origin={"source": e.source, "scene_id": e.scene_id,
                                    "mismatches": ",".join(e.mismatches)})
          for i, e in enumerate(examples)]


def web_captions(config: Any, train_scenes: Sequence[world.Scene],
                 clean: bool = False) -> list[corpora.TextExample]:
  """The base model's web captions (seeded by ``demo.shared_seed``); `clean`: the control
  corpus, the same scenes and template draws with no caption mismatched."""
  c = config.demo.corpus
  return corpora.web_captions(train_scenes, int(config.demo.shared_seed),
                              0.0 if clean else c.mismatch_rate,
                              {"extra_object": c.extra_object_weight,
                               "wrong_color": c.wrong_color_weight})


def write_web_data(config: Any, paths: SeedPaths, train_scenes: Sequence[world.Scene],
                   images: dict[str, bytes], clean: bool = False) -> dict[str, int]:
  """The web-caption dataset of the base model (`clean`: of the control base); returns
  corpus statistics."""
  captions = web_captions(config, train_scenes, clean)
  name = "web_clean" if clean else "web"
  writers.write_jsonl(paths.data(name), _sft_records(captions, name, images))
  return {f"{name}_captions": len(captions),
          f"{name}_captions_mismatched": sum(bool(c.mismatches) for c in captions)}


def write_vqa_data(config: Any, paths: SeedPaths, train_scenes: Sequence[world.Scene],
                   images: dict[str, bytes], seed: int,
                   candidate: int | None = None) -> dict[str, int]:
  """A seed's VQA-SFT dataset: grounded VQA pairs about the training scenes (presence
  questions answered "No" as often as "Yes", counts, colours, shapes, sizes, positions),
  plus replayed captions when ``demo.corpus.vqa_replay == "web"`` (or a sweep
  candidate's settings: `settings.vqa_data_settings`).

  The replay mirrors LLaVA-1.5's SFT mix, which keeps its earlier description data next
  to VQAv2; here that data is the base's own captions, mismatches included.
  """
  demo = config.demo
  data_settings = settings.vqa_data_settings(config, candidate)
  if data_settings["replay"] not in ("web", "none"):
    raise ValueError(f"VQA replay {data_settings['replay']!r}; expected 'web' or 'none'")
  types = tuple(t for t in corpora.VQA_TYPES
                if data_settings["presence_questions"] or t != "presence")
  vqa = corpora.vqa_pairs(train_scenes, seed, per_scene=demo.corpus.vqa_per_scene,
                          types=types)
  share = data_settings["caption_share"] if data_settings["replay"] == "web" else 0.0
  replayed = round(share / (1.0 - share) * len(vqa))
  if not data_settings["vqa_pairs"]:  # a diagnostic: the replayed captions alone
    vqa = []
  web = _sft_records(web_captions(config, train_scenes), "web", images)
  order = np.random.default_rng(seed).permutation(len(web))[:replayed]
  writers.write_jsonl(paths.data(runs.vqa_data_name(candidate)),
                      _sft_records(vqa, "vqa", images) + [web[i] for i in order])
  return {"vqa_pairs": len(vqa), "vqa_stage_replayed_captions": int(len(order))}


def write_labeler_data(config: Any, paths: SeedPaths, train_scenes: Sequence[world.Scene],
                       images: dict[str, bytes], seed: int) -> dict[str, int]:
  """The iterate study's labeler data: VQA pairs about the training scenes, every
  question type (``demo.labeler.vqa_per_scene`` per scene), no captions."""
  lab = config.demo.labeler
  vqa = corpora.vqa_pairs(train_scenes, seed, per_scene=lab.vqa_per_scene,
                          types=tuple(lab.question_types))
  writers.write_jsonl(paths.data(runs.LABELER_DATA), _sft_records(vqa, "vqa", images))
  return {"labeler_vqa_pairs": len(vqa)}


def write_budget_subsets(paths: SeedPaths, budgets: Sequence[int], seed: int) -> dict[int, int]:
  """For each budget b (percent), the first round(b% of N) of the feedback pairs in a
  seeded order, as ``feedback_export/preference%b`` (nested: a smaller budget's pairs
  are in every larger one). Returns b -> pairs."""
  source = paths.feedback_export / runs.preference_data_name(None)
  pairs = list(readers.read_jsonl(source, "train", "preference", records.ErrorLog("raise")))
  order = np.random.default_rng(seed).permutation(len(pairs))
  out = {}
  for budget in budgets:
    if not 0 < budget <= 100:
      raise ValueError(f"feedback budget {budget}% must lie in (0, 100]")
    keep = max(1, round(budget / 100 * len(pairs)))
    writers.write_jsonl(paths.feedback_export / runs.preference_data_name(budget),
                        [pairs[i] for i in sorted(order[:keep])])
    out[int(budget)] = keep
  return out


ORACLE = "oracle"  # the oracle's annotator name in the store


def _oracle_annotates(store: store_lib.AnnotationStore,
                      scenes: dict[str, world.Scene]) -> tuple[int, int, list[str]]:
  """The oracle takes items from the store like any annotator and submits its verdicts.

  Returns:
    (clean, emptied, edit reasons of the corrections).
  """
  clean = emptied = 0
  reasons: list[str] = []
  while (lease := store.next_item(ORACLE)) is not None:
    item = lease.item
    correction = labeler.correct_description(item.answer, scenes[item.id])
    if correction is None:
      verdict, corrected = "no_hallucination", None
      clean += 1
    elif not correction.chosen.strip():
      # Everything it said was invented: the corrected answer is empty, which is no
      # answer to prefer (the labeler corrects, it does not write new descriptions).
      verdict, corrected = "unclear", None
      emptied += 1
    else:
      verdict, corrected = "corrected", correction.chosen
      reasons += correction.reasons
    store.submit(ORACLE, item.id, verdict, corrected, lease_token=lease.token,
                 submission_id=f"{ORACLE}:{item.id}")
  return clean, emptied, reasons


def collect_feedback(config: Any, paths: SeedPaths, params: Any, sample: sampler.Sampler,
                     scenes: Sequence[world.Scene], seed: int) -> dict[str, Any]:
  """Samples a description per scene and runs the feedback loop a lab runs
  (`rlhfv_jax.annotate`): the descriptions go into an annotation store, the oracle
  labeler annotates them there like any annotator, and the store's export is the DDPO
  dataset (``paths.feedback_export``).

  Returns:
    Statistics: samples, unfinished (no EOS within the limit: not labeled), clean
    (nothing to correct), emptied (everything deleted: no pair), corrected (pairs
    written) and the edit reasons of the pairs.
  """
  demo = config.demo
  images = render_all(scenes, demo.world.image_size)
  prompts = corpora.description_prompts(len(scenes))
  s = demo.sampling
  generated = sample(params, [images[sc.scene_id] for sc in scenes], prompts,
                     max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                     temperature=s.temperature, top_p=s.top_p, rng=jax.random.key(seed))
  paths.feedback_images.mkdir(parents=True, exist_ok=True)
  store = store_lib.AnnotationStore(paths.annotations)
  store.image_root = paths.feedback_images
  items, by_item = [], {}
  for scene, prompt, text, done in zip(scenes, prompts, generated.texts, generated.finished):
    if done and text:
      image = f"{scene.scene_id}.png"
      (paths.feedback_images / image).write_bytes(images[scene.scene_id])
      item_id = f"fb-{seed}-{scene.scene_id}"
      items.append(store_lib.Item(item_id, image, prompt, text, {
          "policy": "sft_vqa", "temperature": s.temperature, "top_p": s.top_p}))
      by_item[item_id] = scene
  store.add_items(items)
  clean, emptied, reasons = _oracle_annotates(store, by_item)
  report = export_lib.export(store, paths.feedback_images, paths.feedback_export,
                             with_spans=demo.preference.explicit_spans)
  unfinished = len(scenes) - len(items)
  if report["pairs"] < demo.preference.batch_size:
    raise RuntimeError(
        f"seed {seed}: only {report['pairs']} of {len(scenes)} sampled descriptions give a "
        f"correction ({unfinished} unfinished, {clean} clean, {emptied} corrected to "
        f"nothing), fewer than one preference "
        f"batch ({demo.preference.batch_size}); raise demo.world.num_feedback_scenes")
  verdicts = {a.item_id: a for a in store.annotations()}
  samples = []
  for scene, prompt, text, done in zip(scenes, prompts, generated.texts, generated.finished):
    annotation = verdicts.get(f"fb-{seed}-{scene.scene_id}")
    corrected = annotation is not None and annotation.verdict == "corrected"
    samples.append({"scene_id": scene.scene_id, "prompt": prompt, "response": text,
                    "finished": done, "chosen": annotation.corrected if corrected else None,
                    "verdict": annotation.verdict if annotation else None})
  with paths.feedback_samples.open("w", encoding="utf-8") as f:
    for sample in samples:
      f.write(json.dumps(sample, sort_keys=True) + "\n")
  return {"samples": len(scenes), "unfinished": unfinished, "clean": clean,
          "emptied": emptied, "corrected": report["pairs"],
          "edits": dict(sorted(collections.Counter(reasons).items()))}


