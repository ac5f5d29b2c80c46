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
from rlhfv_jax.data import records, writers
from rlhfv_jax.demo import corpora, labeler, world
from rlhfv_jax.demo.config import SeedPaths

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


def web_captions(config: Any, train_scenes: Sequence[world.Scene]) -> list[corpora.TextExample]:
  """The base model's web captions (seeded by ``demo.base_seed``)."""
  c = config.demo.corpus
  return corpora.web_captions(train_scenes, int(config.demo.base_seed), c.mismatch_rate,
                              {"extra_object": c.extra_object_weight,
                               "wrong_color": c.wrong_color_weight})


def write_web_data(config: Any, paths: SeedPaths, train_scenes: Sequence[world.Scene],
                   images: dict[str, bytes]) -> dict[str, int]:
  """The web-caption dataset of the base model; returns corpus statistics."""
  captions = web_captions(config, train_scenes)
  writers.write_jsonl(paths.data("web"), _sft_records(captions, "web", images))
  return {"web_captions": len(captions),
          "web_captions_mismatched": sum(bool(c.mismatches) for c in captions)}


def write_vqa_data(config: Any, paths: SeedPaths, train_scenes: Sequence[world.Scene],
                   images: dict[str, bytes], seed: int) -> dict[str, int]:
  """A seed's VQA-SFT dataset: VQA pairs about the training scenes plus replayed captions.

  The replay mirrors LLaVA-1.5's SFT mix, which keeps description data next to VQAv2:
  on short VQA answers alone the model learns to answer every prompt in one word.
  """
  demo = config.demo
  vqa = corpora.vqa_pairs(train_scenes, seed, per_scene=demo.corpus.vqa_per_scene)
  share = demo.corpus.vqa_stage_caption_share
  replayed = round(share / (1.0 - share) * len(vqa))
  web = _sft_records(web_captions(config, train_scenes), "web", images)
  order = np.random.default_rng(seed).permutation(len(web))[:replayed]
  writers.write_jsonl(paths.data("vqa"),
                      _sft_records(vqa, "vqa", images) + [web[i] for i in order])
  return {"vqa_pairs": len(vqa), "vqa_stage_replayed_captions": int(len(order))}


def collect_feedback(config: Any, paths: SeedPaths, params: Any, sample: sampler.Sampler,
                     scenes: Sequence[world.Scene], seed: int) -> dict[str, Any]:
  """Samples a description per scene, has the oracle correct it, writes the dataset.

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
  rows, samples = [], []
  reasons: collections.Counter = collections.Counter()
  unfinished = clean = emptied = 0
  for scene, prompt, text, done in zip(scenes, prompts, generated.texts, generated.finished):
    correction = labeler.correct_description(text, scene) if done and text else None
    samples.append({"scene_id": scene.scene_id, "prompt": prompt, "response": text,
                    "finished": done,
                    "chosen": correction.chosen if correction else None,
                    "corrections": list(correction.reasons) if correction else []})
    if not done or not text:
      unfinished += 1
    elif correction is None:
      clean += 1
    elif not correction.chosen.strip():
      # Everything it said was invented: the corrected answer is empty, which is no
      # answer to prefer (the labeler corrects, it does not write new descriptions).
      emptied += 1
    else:
      reasons.update(correction.reasons)
      rows.append(labeler.feedback_record(
          correction, record_id=f"fb-{seed}-{scene.scene_id}",
          image=images[scene.scene_id], question=prompt, scene=scene,
          explicit_spans=demo.preference.explicit_spans,
          origin={"policy": "sft_vqa", "temperature": str(s.temperature)}))
  if len(rows) < demo.preference.batch_size:
    raise RuntimeError(
        f"seed {seed}: only {len(rows)} of {len(scenes)} sampled descriptions give a "
        f"correction ({unfinished} unfinished, {clean} clean, {emptied} corrected to "
        f"nothing), fewer than one preference "
        f"batch ({demo.preference.batch_size}); raise demo.world.num_feedback_scenes")
  writers.write_jsonl(paths.data("feedback"), rows)
  with paths.feedback_samples.open("w", encoding="utf-8") as f:
    for sample in samples:
      f.write(json.dumps(sample, sort_keys=True) + "\n")
  return {"samples": len(scenes), "unfinished": unfinished, "clean": clean,
          "emptied": emptied, "corrected": len(rows), "edits": dict(sorted(reasons.items()))}


