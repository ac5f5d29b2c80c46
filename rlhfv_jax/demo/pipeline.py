"""The demo pipeline: the paper's experiment in miniature, one command, on a CPU.

`run(config, workdir)` (what ``python -m rlhfv_jax.main --config configs/demo.py``
runs) first trains the base model, once, like a released checkpoint everyone starts
from (seed ``demo.base_seed``):

  data        render the training scenes; write "web" captions, a share of them
              mismatched with their image, as a ``jsonl_sft`` dataset
  perception  pretrain the vision tower to read every grid cell (`perception`: the
              miniature's CLIP), saved as the initial checkpoint of sft_web
  sft_web     train projector + language model on the web captions, the pretrained
              tower frozen as LLaVA-1.5 keeps CLIP frozen           (runner "sft")

then, for every seed in ``demo.seeds`` (the seed drives the VQA questions, data
order, sampling, and the DDPO data order):

  data        VQA pairs about the training scenes + replayed captions (``jsonl_sft``)
  sft_vqa     continue the base model on them                        (runner "sft")
  feedback    sample descriptions of new scenes from sft_vqa; the oracle labeler
              corrects only their hallucinated segments -> ``jsonl_preference``
  reference   sft_vqa's per-token log-probs of the feedback (runner "precompute_ref")
  <arm>       preference training from sft_vqa, one run per arm     (runner "ddpo"):
                dpo        γ = 1 (plain DPO, length-normalised)
                ddpo_mean  γ = config.ddpo.gamma, weighted mean (the paper)
                ddpo_sum   γ = config.ddpo.gamma, weighted sum (released scripts)
                ddpo_crop  ddpo with config.ddpo.normalize + random-crop augmentation

Every trained model is evaluated on the same held-out scenes (disjoint from all
training scenes): greedy descriptions -> CHAIR-style metrics (`metrics`).

Every training stage is the project's own `rlhfv_jax.train.runner` on the project's
data path (TFDS array_record built from the JSONL files, grain loader, chat
template, segment masks), so the demo exercises exactly what a real run does.

Workdir layout::

  demo_config.json         the config this workdir belongs to (a re-run resumes; a
                           different config is refused)
  tokenizer.model          the demo tokenizer (`rlhfv_jax.demo.tokenizer`)
  base/data/web/           train.jsonl + images/ (the web captions)
  base/perception/         checkpoints/ (random LLaVA + pretrained tower), perception.json
  base/sft_web/            runner workdir: checkpoints/, metrics.jsonl, tensorboard/
  seed_<s>/data/{vqa,feedback}/     train.jsonl + images/
  seed_<s>/feedback_samples.jsonl   every sampled description with the oracle's verdict
  {base,seed_<s>}/tfds/    built datasets (+ the reference log-prob cache)
  seed_<s>/<stage>/        runner workdirs of sft_vqa, reference and the arms
  {base,seed_<s>}/eval/<model>.jsonl  every evaluation description with its scores
  results.json             all metrics, feedback statistics and stage timings
  ablation.md / ablation.csv / ablation_per_seed.csv / ablation.png
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from rlhfv_jax import model as model_lib
from rlhfv_jax import sampler
from rlhfv_jax.data import factory, records, writers
from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax.demo import corpora, labeler, metrics, perception, report, world
from rlhfv_jax.demo import tokenizer as demo_tokenizer
from rlhfv_jax.train import checkpointing, config_validation, defaults, model_init, runner

SFT_STAGES = ("sft_web", "sft_vqa")
ARMS = ("dpo", "ddpo_mean", "ddpo_sum", "ddpo_crop")
MODELS = SFT_STAGES + ARMS


def default_config() -> ml_collections.ConfigDict:
  """The full demo's config (`configs/demo.py` starts from it)."""
  config = defaults.base_config("sft", "tiny")
  config.stage = "demo"
  config.model = demo_model_config()
  config.data.update(
      system_message="A chat about an image.",  # short prompts keep sequences short
      # One length per stage, so each trains with a single compilation: VQA pairs fit
      # 64 tokens, captions and sampled descriptions (<= 80 new tokens) fit 112.
      buckets=(64, 112), num_threads=2)
  config.ddpo.update(gamma=5.0, beta=0.5, normalize=True, segment_mode="paper")
  config.optim.update(warmup_fraction=0.05, end_lr_fraction=0.1, max_grad_norm=1.0,
                      weight_decay=0.0)
  config.train.update(parallelism="pmap", log_every=100)
  config.checkpoint.update(every_steps=1_000_000, max_to_keep=1, async_save=False)
  config.precompute.batch_size = 32
  config.demo = ml_collections.ConfigDict(dict(
      seeds=(0, 1, 2),
      base_seed=0,  # the web-pretrained base model is trained once and shared by all seeds
      world=dict(image_size=48, min_objects=1, max_objects=4, num_train_scenes=6000,
                 num_feedback_scenes=512, num_eval_scenes=200, eval_seed=1000),
      corpus=dict(mismatch_rate=0.5, extra_object_weight=3.0, wrong_color_weight=1.0,
                  vqa_per_scene=2, vqa_stage_caption_share=0.3),
      vocab_size=demo_tokenizer.DEFAULT_VOCAB_SIZE,
      # Stage hyper-parameters: the tiny model trains from scratch, so the rates are far
      # above the paper's 5e-7 (which fine-tunes a 7B model).
      # The miniature's CLIP (see `perception`): learns to read all cells in ~200 steps.
      perception=dict(steps=300, batch_size=64, learning_rate=3e-3, num_val_scenes=256),
      # The pretrained tower stays frozen in every stage, as CLIP does in LLaVA-1.5.
      sft_web=dict(steps=1500, batch_size=32, learning_rate=3e-3, frozen=("vision_tower",)),
      sft_vqa=dict(steps=100, batch_size=32, learning_rate=1e-3, frozen=("vision_tower",)),
      sampling=dict(temperature=0.7, top_p=0.95, max_new_tokens=80, batch_size=64),
      preference=dict(num_epochs=2.0, batch_size=16, learning_rate=1e-4,
                      frozen=("vision_tower",), explicit_spans=False),
      eval=dict(max_new_tokens=80, batch_size=100),
  ))
  return config


def demo_model_config() -> ml_collections.ConfigDict:
  """The tiny LLaVA of the demo (~0.25M parameters).

  48px images in 16px patches give one image token per grid cell (9 tokens). The
  vocabulary fields are placeholders: `stage_config` sets them from the tokenizer.
  """
  cfg = model_lib.llava_config("tiny", vocab_size=demo_tokenizer.DEFAULT_VOCAB_SIZE + 1)
  cfg.vision.update(image_size=48, patch_size=16, hidden_size=64, intermediate_size=128,
                    num_layers=1, num_heads=4, feature_layer=-1)
  cfg.text.update(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
                  num_kv_heads=4, head_dim=16, max_position_embeddings=256)
  return cfg


# ---------------------------------------------------------------------------- configs

@dataclasses.dataclass(frozen=True)
class ArmSpec:
  """A preference-training arm of the ablation."""

  label: str
  ddpo_overrides: Callable[[Any], dict]
  augmentation: str = "none"


ARM_SPECS: dict[str, ArmSpec] = {
    "dpo": ArmSpec("+ DPO (γ=1)", lambda d: dict(gamma=1.0, normalize=True)),
    "ddpo_mean": ArmSpec("+ DDPO (γ={gamma:g}, weighted mean)",
                         lambda d: dict(gamma=d.gamma, normalize=True)),
    "ddpo_sum": ArmSpec("+ DDPO (γ={gamma:g}, weighted sum)",
                        lambda d: dict(gamma=d.gamma, normalize=False)),
    "ddpo_crop": ArmSpec("+ DDPO (γ={gamma:g}) with random crop",
                         lambda d: dict(gamma=d.gamma, normalize=d.normalize),
                         augmentation="random_crop_ablation"),
}
SFT_LABELS = {"sft_web": "SFT on web captions", "sft_vqa": "+ VQA SFT"}


def model_labels(config: Any) -> dict[str, str]:
  """Row labels of the ablation table."""
  labels = dict(SFT_LABELS)
  labels.update({arm: spec.label.format(gamma=config.ddpo.gamma)
                 for arm, spec in ARM_SPECS.items()})
  return labels


@dataclasses.dataclass(frozen=True)
class SeedPaths:
  """Where one seed's data and runs live."""

  root: pathlib.Path

  def data(self, name: str) -> pathlib.Path:
    return self.root / "data" / name

  @property
  def feedback_samples(self) -> pathlib.Path:
    """Every sampled description with the oracle's verdict (outside the dataset dir:
    each ``*.jsonl`` there is a split)."""
    return self.root / "feedback_samples.jsonl"

  @property
  def tfds(self) -> pathlib.Path:
    return self.root / "tfds"

  def run(self, name: str) -> pathlib.Path:
    return self.root / name

  def eval(self, name: str) -> pathlib.Path:
    return self.root / "eval" / f"{name}.jsonl"


def base_paths(root: pathlib.Path) -> SeedPaths:
  """The shared base model's directories (web data, sft_web)."""
  return SeedPaths(root / "base")


def seed_paths(root: pathlib.Path, seed: int) -> SeedPaths:
  """One seed's directories (VQA data, feedback, sft_vqa, reference, arms)."""
  return SeedPaths(root / f"seed_{seed}")


def stage_config(config: Any, root: pathlib.Path, seed: int, name: str,
                 tokenizer_path: pathlib.Path,
                 tokenizer: tokenizer_lib.Tokenizer | TokenIds) -> ml_collections.ConfigDict:
  """The runner config of one stage ("sft_web", "sft_vqa", "reference" or an arm).

  Args:
    config: the demo config.
    root: the demo workdir.
    seed: the seed (ignored for "sft_web", which uses ``demo.base_seed``).
    name: the stage.
    tokenizer_path: the demo tokenizer file.
    tokenizer: the loaded tokenizer (its ids fix the model's vocabulary fields).

  Returns:
    A validated-ready config for `rlhfv_jax.train.runner` (stage, init, data, ...).
  """
  demo = config.demo
  kind = {"sft_web": "sft", "sft_vqa": "sft", "reference": "precompute_ref"}.get(name, "ddpo")
  out = defaults.base_config(kind, "tiny")
  for section in ("model", "data", "ddpo", "train", "optim", "checkpoint", "precompute",
                  "eval"):
    out[section] = copy.deepcopy(config[section])
  if name == "sft_web":
    seed = int(demo.base_seed)
    paths = base_paths(root)
  else:
    paths = seed_paths(root, seed)
  out.seed = seed
  out.model.text.vocab_size = tokenizer.vocab_size
  out.model.image_token_id = tokenizer.image_token_id
  out.model.pad_token_id = tokenizer.pad_id
  out.model.bos_token_id = tokenizer.bos_id
  out.model.eos_token_id = tokenizer.eos_id
  out.data.update(tokenizer=str(tokenizer_path), seed=seed)
  if name == "sft_web":
    out.init.update(params="checkpoint", checkpoint_dir=str(paths.run("perception")))
    settings = demo.sft_web
  elif name == "sft_vqa":
    out.init.update(params="checkpoint",
                    checkpoint_dir=str(base_paths(root).run("sft_web")))
    settings = demo.sft_vqa
  else:  # the reference and every arm start from the VQA-tuned model
    out.init.update(params="checkpoint", checkpoint_dir=str(paths.run("sft_vqa")))
    settings = demo.preference
  if kind == "sft":
    source = "web" if name == "sft_web" else "vqa"
    # One TFDS data dir per source: both SFT sources are `jsonl_sft` datasets, and a
    # shared dir would serve the first one built to both stages.
    out.data.update(dataset="jsonl_sft", source_dir=str(paths.data(source)),
                    data_dir=str(paths.tfds / source))
    out.train.update(global_batch_size=settings.batch_size, num_steps=settings.steps)
  else:
    out.data.update(dataset="jsonl_preference", source_dir=str(paths.data("feedback")),
                    data_dir=str(paths.tfds / "feedback"))
    out.train.update(global_batch_size=settings.batch_size, num_steps=0,
                     num_epochs=settings.num_epochs)
  out.optim.update(learning_rate=settings.learning_rate, frozen=tuple(settings.frozen))
  if name in ARM_SPECS:
    spec = ARM_SPECS[name]
    out.ddpo.update(spec.ddpo_overrides(config.ddpo))
    out.data.augmentation = spec.augmentation
    # The cache holds log-probs of un-augmented images; a cropped policy input needs
    # the reference forward on the same crop.
    out.data.use_ref_cache = spec.augmentation == "none"
  return out


def validate(config: Any) -> None:
  """Checks the demo section and, through the trainer's own validation, every stage."""
  demo = config.demo
  problems = []
  if not demo.seeds:
    problems.append("demo.seeds is empty")
  if len(set(demo.seeds)) != len(demo.seeds):
    problems.append(f"demo.seeds={tuple(demo.seeds)} repeats a seed")
  w = demo.world
  if w.image_size != config.model.vision.image_size:
    problems.append(f"demo.world.image_size={w.image_size} must equal "
                    f"model.vision.image_size={config.model.vision.image_size}")
  for field in ("num_train_scenes", "num_feedback_scenes", "num_eval_scenes"):
    if w[field] < 1:
      problems.append(f"demo.world.{field}={w[field]} must be >= 1")
  if demo.preference.batch_size > w.num_feedback_scenes:
    problems.append(f"demo.preference.batch_size={demo.preference.batch_size} exceeds "
                    f"demo.world.num_feedback_scenes={w.num_feedback_scenes}")
  if problems:
    raise ValueError("invalid demo config:\n  - " + "\n  - ".join(problems))
  for name in ("sft_web", "sft_vqa", "reference") + ARMS:
    stage = stage_config(config, pathlib.Path("/nonexistent"), demo.seeds[0], name,
                         pathlib.Path("tokenizer.model"), TokenIds.of_model(config.model))
    stage.data.source_dir = ""  # validation must not build datasets
    try:
      config_validation.validate_config(stage)
    except ValueError as e:
      raise ValueError(f"demo stage {name!r}: {e}") from e


@dataclasses.dataclass(frozen=True)
class TokenIds:
  """The tokenizer facts a stage config needs (a loaded tokenizer has them too)."""

  vocab_size: int
  image_token_id: int
  pad_id: int
  bos_id: int
  eos_id: int

  @classmethod
  def of_model(cls, model_config: Any) -> "TokenIds":
    """The ids a model config holds (to validate stage configs before the tokenizer)."""
    return cls(model_config.text.vocab_size, model_config.image_token_id,
               model_config.pad_token_id, model_config.bos_token_id,
               model_config.eos_token_id)


# ---------------------------------------------------------------------------- data

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


# ---------------------------------------------------------------------------- models

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


def evaluate(config: Any, paths: SeedPaths, name: str, params: Any, sample: sampler.Sampler,
             eval_scenes: Sequence[world.Scene], eval_images: dict[str, bytes]
             ) -> dict[str, float]:
  """Greedy descriptions of the held-out scenes -> CHAIR-style metrics (and a JSONL log)."""
  prompts = corpora.description_prompts(len(eval_scenes))
  e = config.demo.eval
  samples = sample(params, [eval_images[s.scene_id] for s in eval_scenes], prompts,
                   max_new_tokens=e.max_new_tokens, batch_size=e.batch_size)
  texts, finished = samples.texts, samples.finished
  scores = [metrics.score_response(t, s) for t, s in zip(texts, eval_scenes)]
  out = paths.eval(name)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("w", encoding="utf-8") as f:
    for scene, prompt, text, done, score in zip(eval_scenes, prompts, texts, finished, scores):
      f.write(json.dumps({"scene_id": scene.scene_id, "prompt": prompt, "response": text,
                          "finished": done, **dataclasses.asdict(score)}, sort_keys=True)
              + "\n")
  result = metrics.aggregate(scores)
  result["unfinished"] = sum(not d for d in finished) / len(finished)
  return result


# ---------------------------------------------------------------------------- driver

class Progress:
  """Stage timings and one console line per finished stage."""

  def __init__(self, total_stages: int):
    self.start = time.monotonic()
    self.total = total_stages
    self.done = 0
    self.timings: list[dict[str, Any]] = []

  def stage(self, label: str, name: str, fn: Callable[[], Any]) -> Any:
    logging.info("demo: %s, stage %s (%d/%d) ...", label, name, self.done + 1, self.total)
    t0 = time.monotonic()
    result = fn()
    seconds = time.monotonic() - t0
    self.done += 1
    self.timings.append({"run": label, "stage": name, "seconds": round(seconds, 2)})
    elapsed = time.monotonic() - self.start
    eta = elapsed / self.done * (self.total - self.done)
    logging.info("demo: %s, stage %s done in %.1fs (%d/%d stages, %.0fs elapsed, "
                 "~%.0fs to go)", label, name, seconds, self.done, self.total, elapsed, eta)
    return result


def _check_workdir(config: Any, workdir: pathlib.Path) -> None:
  """A workdir belongs to one config: a re-run resumes it, another config is refused."""
  stamp = workdir / "demo_config.json"
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if stamp.exists() and stamp.read_text() != text:
    raise ValueError(f"{workdir} holds a demo run with a different config ({stamp}); use a "
                     "fresh --workdir (re-running with the same config resumes)")
  workdir.mkdir(parents=True, exist_ok=True)
  stamp.write_text(text)


def _enable_compilation_cache(workdir: pathlib.Path) -> None:
  """Seeds 2.. compile the same programs as seed 1: cache them on disk."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@dataclasses.dataclass
class _Context:
  """What every stage of a run shares."""

  config: Any
  root: pathlib.Path
  tokenizer_path: pathlib.Path
  train_scenes: Sequence[world.Scene]
  train_images: dict[str, bytes]
  eval_scenes: Sequence[world.Scene]
  eval_images: dict[str, bytes]
  progress: Progress

  def stage_config(self, seed: int, name: str) -> ml_collections.ConfigDict:
    tokenizer = tokenizer_lib.SentencePieceTokenizer(self.tokenizer_path)
    stage = stage_config(self.config, self.root, seed, name, self.tokenizer_path, tokenizer)
    config_validation.validate_config(stage)
    return stage

  def train_and_eval(self, seed: int, paths: SeedPaths, name: str, label: str,
                     metrics_out: dict) -> tuple[Any, sampler.Sampler]:
    """Runs a training stage (config.json + `runner.train_stage`) and evaluates it."""
    stage = self.stage_config(seed, name)
    params = runner.run(stage, str(paths.run(name)))
    sample = sampler.Sampler.from_config(stage)
    metrics_out[name] = evaluate(self.config, paths, name, params, sample,
                                 self.eval_scenes, self.eval_images)
    logging.info("demo: %s, %s: %s", label, name, json.dumps(
        {k: round(v, 3) for k, v in metrics_out[name].items()}))
    return params, sample


def pretrain_perception(ctx: _Context, paths: SeedPaths) -> dict[str, Any]:
  """The sft_web stage's initial checkpoint: a random LLaVA holding the pretrained tower.

  Returns the tower's accuracy per attribute on validation scenes (disjoint from the
  held-out evaluation scenes). A re-run finds the checkpoint and its summary and resumes.
  """
  run_dir = paths.run("perception")
  summary_file = run_dir / "perception.json"
  ckpt = checkpointing.Checkpointer(model_init.checkpoint_dir(run_dir), save_every_steps=1,
                                    async_save=False)
  try:
    if ckpt.latest_step() is not None and summary_file.is_file():
      return json.loads(summary_file.read_text())
    demo, seed = ctx.config.demo, int(ctx.config.demo.base_seed)
    p, w = demo.perception, demo.world
    stage = ctx.stage_config(seed, "sft_web")
    preprocessor = factory.make_preprocessor(stage, factory.ModelFacts.from_config(stage),
                                             augment=False)
    val_scenes = world.sample_scenes(30_000 + seed, p.num_val_scenes, "perception-val",
                                     w.min_objects, w.max_objects, exclude=ctx.eval_scenes)
    result = perception.pretrain_vision_tower(
        stage.model, preprocessor, ctx.train_scenes, ctx.train_images, val_scenes,
        render_all(val_scenes, w.image_size), steps=p.steps, batch_size=p.batch_size,
        learning_rate=p.learning_rate, seed=seed)
    worst = min(result.accuracy.values())
    if worst < 0.95:
      logging.warning("demo: the pretrained vision tower reads only %.3f of validation cells "
                      "right (%s); raise demo.perception.steps", worst, result.accuracy)
    params = dict(model_lib.init_params(stage.model, jax.random.PRNGKey(seed)),
                  vision_tower=result.vision_tower)
    ckpt.save(0, {"params": params})
    summary = {"val_accuracy": result.accuracy, "final_loss": result.final_loss,
               "val_scenes": len(val_scenes)}
    summary_file.write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
  finally:
    ckpt.close()


def run_base(ctx: _Context) -> dict[str, Any]:
  """The base model every seed starts from: perception pretraining, then web captions."""
  paths = base_paths(ctx.root)
  out: dict[str, Any] = {"metrics": {}}
  label = f"base (seed {ctx.config.demo.base_seed})"
  out["corpus"] = ctx.progress.stage(label, "data", lambda: write_web_data(
      ctx.config, paths, ctx.train_scenes, ctx.train_images))
  out["perception"] = ctx.progress.stage(label, "perception",
                                         lambda: pretrain_perception(ctx, paths))
  logging.info("demo: %s, perception: %s", label, json.dumps(out["perception"]))
  ctx.progress.stage(label, "sft_web", lambda: ctx.train_and_eval(
      ctx.config.demo.base_seed, paths, "sft_web", label, out["metrics"]))
  return out


def run_seed(ctx: _Context, seed: int) -> dict[str, Any]:
  """One seed's stages from the base model; returns its metrics and feedback statistics."""
  config, w = ctx.config, ctx.config.demo.world
  paths = seed_paths(ctx.root, seed)
  label = f"seed {seed}"
  feedback_scenes = world.sample_scenes(20_000 + seed, w.num_feedback_scenes,
                                        f"feedback{seed}", w.min_objects, w.max_objects,
                                        exclude=ctx.eval_scenes)
  out: dict[str, Any] = {"metrics": {}}
  out["corpus"] = ctx.progress.stage(label, "data", lambda: write_vqa_data(
      config, paths, ctx.train_scenes, ctx.train_images, seed))
  sft_params, sample = ctx.progress.stage(label, "sft_vqa", lambda: ctx.train_and_eval(
      seed, paths, "sft_vqa", label, out["metrics"]))
  out["feedback"] = ctx.progress.stage(label, "feedback", lambda: collect_feedback(
      config, paths, sft_params, sample, feedback_scenes, seed))
  logging.info("demo: %s feedback: %s", label, json.dumps(out["feedback"]))
  ctx.progress.stage(label, "reference", lambda: runner.run(
      ctx.stage_config(seed, "reference"), str(paths.run("reference"))))
  for arm in ARMS:
    ctx.progress.stage(label, arm, lambda arm=arm: ctx.train_and_eval(
        seed, paths, arm, label, out["metrics"]))
  return out


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs the whole demo (see the module docstring) and writes the ablation report.

  Args:
    config: the demo config (`configs/demo.py`).
    workdir: output directory (created; a re-run with the same config resumes).

  Returns:
    The contents of results.json.
  """
  validate(config)
  root = pathlib.Path(workdir)
  _check_workdir(config, root)
  _enable_compilation_cache(root)
  demo, w = config.demo, config.demo.world
  seeds = [int(s) for s in demo.seeds]
  progress = Progress(total_stages=3 + len(seeds) * (4 + len(ARMS)))
  tokenizer_path = demo_tokenizer.make_tokenizer_file(
      root / "tokenizer.model", config.data.system_message, demo.vocab_size)
  eval_scenes = world.sample_scenes(w.eval_seed, w.num_eval_scenes, "eval", w.min_objects,
                                    w.max_objects)
  train_scenes = world.sample_scenes(10_000 + int(demo.base_seed), w.num_train_scenes,
                                     "train", w.min_objects, w.max_objects,
                                     exclude=eval_scenes)
  ctx = _Context(config, root, tokenizer_path, train_scenes,
                 render_all(train_scenes, w.image_size), eval_scenes,
                 render_all(eval_scenes, w.image_size), progress)
  base = run_base(ctx)
  per_seed = {seed: run_seed(ctx, seed) for seed in seeds}
  # The base model is shared: one evaluation, reported with n = 1.
  results = {"sft_web": {"base": base["metrics"]["sft_web"]}}
  results.update({model: {seed: per_seed[seed]["metrics"][model] for seed in seeds}
                  for model in MODELS if model != "sft_web"})
  labels = model_labels(config)
  summary = {
      "seeds": seeds,
      "base_seed": int(demo.base_seed),
      "models": {m: {"label": labels[m],
                     "per_seed": {str(s): v for s, v in results[m].items()}}
                 for m in MODELS},
      "feedback": {str(s): per_seed[s]["feedback"] for s in seeds},
      "corpus": dict(base["corpus"], **{f"seed_{s}": per_seed[s]["corpus"] for s in seeds}),
      "perception": base["perception"],
      "eval_scenes": len(eval_scenes),
      "timings": progress.timings,
      "total_seconds": round(time.monotonic() - progress.start, 1),
  }
  (root / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
  write_report(config, root, results, labels, seeds, summary)
  logging.info("demo finished in %.0fs; ablation table:\n%s", summary["total_seconds"],
               (root / "ablation.md").read_text())
  return summary


def write_report(config: Any, root: pathlib.Path, results: report.Results,
                 labels: dict[str, str], seeds: Sequence[int], summary: dict) -> None:
  """ablation.md / ablation.csv / ablation_per_seed.csv / ablation.png."""
  table = report.markdown_table(results, MODELS, labels)
  feedback = summary["feedback"]
  corrected = [feedback[str(s)]["corrected"] for s in seeds]
  sampled = [feedback[str(s)]["samples"] for s in seeds]
  text = "\n".join([
      f"# RLHF-V demo: ablation over {len(seeds)} seed(s) {list(seeds)}", "",
      f"Greedy descriptions of {summary['eval_scenes']} held-out scenes; mean ± sample std "
      f"over seeds. The web-caption base model is trained once (seed "
      f"{summary['base_seed']}) and shared by every seed, hence n=1 on its row. "
      "CHAIR_s: share of descriptions with a hallucinated object; CHAIR_i: share of "
      "object mentions that are hallucinated; recall: share of ground-truth objects "
      "mentioned; attribute errors: wrong size/position among mentions of present "
      "objects.", "", table, "",
      f"Feedback per seed: {corrected} corrected of {sampled} sampled descriptions "
      f"(temperature {config.demo.sampling.temperature}); DDPO γ={config.ddpo.gamma:g}, "
      f"β={config.ddpo.beta:g}, segment mode {config.ddpo.segment_mode!r}.",
      f"Total time: {summary['total_seconds']:.0f}s.", ""])
  (root / "ablation.md").write_text(text)
  report.write_csv(root / "ablation.csv", results, MODELS, labels)
  report.write_per_seed_csv(root / "ablation_per_seed.csv", results, MODELS)
  report.plot(root / "ablation.png", results, MODELS, labels,
              f"RLHF-V demo, {len(seeds)} seed(s), {summary['eval_scenes']} held-out scenes")
