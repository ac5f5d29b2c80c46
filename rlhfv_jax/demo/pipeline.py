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
  feedback    sample descriptions of new scenes from sft_vqa into an annotation store
              (`rlhfv_jax.annotate`); the oracle labeler, an annotator like any other,
              corrects only their hallucinated segments; the store's export ->
              ``jsonl_preference``
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
  seed_<s>/data/vqa/                train.jsonl + images/
  seed_<s>/annotations.sqlite       the annotation store (items, the oracle's annotations)
  seed_<s>/feedback_images/         its image root
  seed_<s>/feedback_export/         its export: preference/ (the DDPO data), rlhfv_parquet/, ...
  seed_<s>/feedback_samples.jsonl   every sampled description with the oracle's verdict
  {base,seed_<s>}/tfds/    built datasets (+ the reference log-prob cache)
  seed_<s>/<stage>/        runner workdirs of sft_vqa, reference and the arms
  {base,seed_<s>}/eval/<model>.jsonl  every evaluation description with its scores
  results.json             all metrics, feedback statistics and stage timings
  ablation.md / ablation.csv / ablation_per_seed.csv / ablation.png
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
from absl import logging

from rlhfv_jax import model as model_lib
from rlhfv_jax import sampler
from rlhfv_jax.data import factory
from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax.demo import corpora, datasets, metrics, perception, report, world
from rlhfv_jax.demo import tokenizer as demo_tokenizer
from rlhfv_jax.demo.config import (ARMS, MODELS, SeedPaths, base_paths, model_labels,
                                   seed_paths, stage_config, validate)
from rlhfv_jax.train import checkpointing, config_validation, model_init, runner


def evaluate(config: Any, paths: SeedPaths, name: str, params: Any, sample: sampler.Sampler,
             eval_scenes: Sequence[world.Scene], eval_images: dict[str, bytes]
             ) -> dict[str, float]:
  """Greedy descriptions of the held-out scenes -> CHAIR-style metrics (and a JSONL log)."""
  prompts = corpora.description_prompts(len(eval_scenes))
  e = config.demo.eval
  samples = sample(params, [eval_images[s.scene_id] for s in eval_scenes], prompts,
                   max_new_tokens=e.max_new_tokens, batch_size=e.batch_size)
  texts, finished = samples.texts, samples.finished
  scores = metrics.score_responses(texts, eval_scenes)
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
        datasets.render_all(val_scenes, w.image_size), steps=p.steps, batch_size=p.batch_size,
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
  out["corpus"] = ctx.progress.stage(label, "data", lambda: datasets.write_web_data(
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
  out["corpus"] = ctx.progress.stage(label, "data", lambda: datasets.write_vqa_data(
      config, paths, ctx.train_scenes, ctx.train_images, seed))
  sft_params, sample = ctx.progress.stage(label, "sft_vqa", lambda: ctx.train_and_eval(
      seed, paths, "sft_vqa", label, out["metrics"]))
  out["feedback"] = ctx.progress.stage(label, "feedback", lambda: datasets.collect_feedback(
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
                 datasets.render_all(train_scenes, w.image_size), eval_scenes,
                 datasets.render_all(eval_scenes, w.image_size), progress)
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
