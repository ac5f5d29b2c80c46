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
  sft_web_clean  with ``demo.control_base``: the control, trained the same way on the
              same scenes with every caption faithful (the row that shows the cause)

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
training scenes): greedy descriptions -> CHAIR-style metrics (`metrics`). The report
compares models by paired differences with 95% bootstrap intervals over those scenes
(`stats`).

``demo.study = "sweep"`` (`run_sweep`, configs/demo.py:sweep) runs the studies instead:
the control base beside the web base, the VQA-stage candidates of ``demo.sweep`` scored
on validation scenes (never the held-out ones) with one of them chosen by `select_vqa`,
and per seed, DPO and DDPO trained on 25 / 50 / 100% of the feedback pairs.

Every training stage is the project's own `rlhfv_jax.stages.runner` on the project's
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
  ablation.md / ablation.csv / ablation_per_seed.csv / ablation_differences.csv /
  ablation.png             (the sweep: sweep.md / sweep.csv / sweep.png)
"""

from __future__ import annotations

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
from rlhfv_jax.data import factory
from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax.demo import corpora, datasets, metrics, perception, report, stats, world
from rlhfv_jax.demo import tokenizer as demo_tokenizer
from rlhfv_jax.demo.config import (ARMS, BASE_MODELS, CONTROL, SeedPaths, base_paths,
                                   model_labels, models, seed_paths, stage_config, validate,
                                   with_vqa_candidate)
from rlhfv_jax.train import checkpointing
from rlhfv_jax.stages import config_validation, model_init, runner


def evaluate(config: Any, paths: SeedPaths, name: str, params: Any, sample: sampler.Sampler,
             eval_scenes: Sequence[world.Scene], eval_images: dict[str, bytes]
             ) -> dict[str, float]:
  """Greedy descriptions of the scenes -> CHAIR-style metrics (and the JSONL log
  ``paths.eval(name)``, whose per-scene counts the report's intervals resample)."""
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
  val_scenes: Sequence[world.Scene] = ()
  val_images: dict[str, bytes] = dataclasses.field(default_factory=dict)

  def stage_config(self, seed: int, name: str) -> ml_collections.ConfigDict:
    tokenizer = tokenizer_lib.SentencePieceTokenizer(self.tokenizer_path)
    stage = stage_config(self.config, self.root, seed, name, self.tokenizer_path, tokenizer)
    config_validation.validate_config(stage)
    return stage

  def train_and_eval(self, seed: int, paths: SeedPaths, name: str, label: str,
                     metrics_out: dict, on_validation: bool = False
                     ) -> tuple[Any, sampler.Sampler]:
    """Runs a training stage (config.json + `runner.train_stage`) and evaluates it on the
    held-out scenes, or with `on_validation` on the validation scenes (as
    ``<name>@val``)."""
    stage = self.stage_config(seed, name)
    params = runner.run(stage, str(paths.run(name)))
    sample = sampler.Sampler.from_config(stage)
    self.evaluate(paths, name, params, sample, label, metrics_out, on_validation)
    return params, sample

  def evaluate(self, paths: SeedPaths, name: str, params: Any, sample: sampler.Sampler,
               label: str, metrics_out: dict, on_validation: bool = False) -> None:
    if on_validation:
      scenes, images, name = self.val_scenes, self.val_images, f"{name}@val"
    else:
      scenes, images = self.eval_scenes, self.eval_images
    metrics_out[name] = evaluate(self.config, paths, name, params, sample, scenes, images)
    logging.info("demo: %s, %s: %s", label, name, json.dumps(
        {k: round(v, 3) for k, v in metrics_out[name].items()}))


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
  if ctx.config.demo.control_base:
    out["corpus"].update(ctx.progress.stage(label, "data_clean", lambda: datasets.write_web_data(
        ctx.config, paths, ctx.train_scenes, ctx.train_images, clean=True)))
    ctx.progress.stage(label, CONTROL, lambda: ctx.train_and_eval(
        ctx.config.demo.base_seed, paths, CONTROL, label, out["metrics"]))
  return out


def run_seed(ctx: _Context, seed: int) -> dict[str, Any]:
  """One seed's stages from the base model; returns its metrics and feedback statistics."""
  config, w = ctx.config, ctx.config.demo.world
  paths = seed_paths(ctx.root, seed)
  label = f"seed {seed}"
  feedback_scenes = world.sample_scenes(20_000 + seed, w.num_feedback_scenes,
                                        f"feedback{seed}", w.min_objects, w.max_objects,
                                        exclude=list(ctx.eval_scenes) + list(ctx.val_scenes))
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


def _context(config: Any, root: pathlib.Path, total_stages: int) -> _Context:
  """Scenes (training, held-out, validation: pairwise disjoint), images and tokenizer."""
  demo, w = config.demo, config.demo.world
  tokenizer_path = demo_tokenizer.make_tokenizer_file(
      root / "tokenizer.model", config.data.system_message, demo.vocab_size)
  eval_scenes = world.sample_scenes(w.eval_seed, w.num_eval_scenes, "eval", w.min_objects,
                                    w.max_objects)
  val_scenes = world.sample_scenes(demo.validation.seed, demo.validation.num_scenes, "val",
                                   w.min_objects, w.max_objects, exclude=eval_scenes)
  train_scenes = world.sample_scenes(10_000 + int(demo.base_seed), w.num_train_scenes,
                                     "train", w.min_objects, w.max_objects,
                                     exclude=list(eval_scenes) + list(val_scenes))
  return _Context(config, root, tokenizer_path, train_scenes,
                  datasets.render_all(train_scenes, w.image_size), eval_scenes,
                  datasets.render_all(eval_scenes, w.image_size), Progress(total_stages),
                  val_scenes, datasets.render_all(val_scenes, w.image_size))


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs the whole demo (see the module docstring) and writes the ablation report, or
  with ``demo.study == "sweep"`` the studies (`run_sweep`).

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
  if config.demo.study == "sweep":
    return run_sweep(config, root)
  seeds = [int(s) for s in config.demo.seeds]
  ctx = _context(config, root, 3 + 2 * config.demo.control_base
                 + len(seeds) * (4 + len(ARMS)))
  base = run_base(ctx)
  per_seed = {seed: run_seed(ctx, seed) for seed in seeds}
  # The base models are shared: one evaluation each, reported with n = 1.
  results = {m: {"base": base["metrics"][m]} for m in BASE_MODELS if m in base["metrics"]}
  results.update({model: {seed: per_seed[seed]["metrics"][model] for seed in seeds}
                  for model in models(config) if model not in BASE_MODELS})
  labels = model_labels(config)
  summary = {
      "seeds": seeds,
      "base_seed": int(config.demo.base_seed),
      "models": {m: {"label": labels[m],
                     "per_seed": {str(s): v for s, v in results[m].items()}}
                 for m in models(config)},
      "feedback": {str(s): per_seed[s]["feedback"] for s in seeds},
      "corpus": dict(base["corpus"], **{f"seed_{s}": per_seed[s]["corpus"] for s in seeds}),
      "perception": base["perception"],
      "eval_scenes": len(ctx.eval_scenes),
      "timings": ctx.progress.timings,
      "total_seconds": round(time.monotonic() - ctx.progress.start, 1),
  }
  (root / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
  write_report(config, root, results, labels, seeds, summary)
  logging.info("demo finished in %.0fs; ablation table:\n%s", summary["total_seconds"],
               (root / "ablation.md").read_text())
  return summary


def count_tables(root: pathlib.Path, model: str, seeds: Sequence[int]) -> list[np.ndarray]:
  """Per seed, the per-scene counts (`stats.count_table`) of a model's held-out
  descriptions, read back from its evaluation log; a base model's one log serves every
  seed."""
  fields = {f.name for f in dataclasses.fields(metrics.ResponseScore)}
  tables = []
  for seed in seeds:
    paths = base_paths(root) if model in BASE_MODELS else seed_paths(root, seed)
    with paths.eval(model).open(encoding="utf-8") as f:
      scores = [metrics.ResponseScore(**{k: v for k, v in json.loads(line).items()
                                         if k in fields}) for line in f if line.strip()]
    tables.append(stats.count_table(scores))
  return tables


def _runs(tables: dict[str, list[np.ndarray]], *names: str) -> int:
  """How many seeds' tables a comparison of `names` resamples: a base model's one
  evaluation stands for every seed, and where only base models are involved it is used
  once (copies resampled as if they were independent seeds would narrow the interval by
  sqrt(seeds))."""
  return 1 if all(n in BASE_MODELS for n in names) else len(tables[names[0]])


def paired_differences(tables: dict[str, list[np.ndarray]],
                       comparisons: Sequence[tuple[str, str]]
                       ) -> dict[tuple[str, str, str], stats.Difference]:
  """`stats.paired_difference` of every (A, B) and `report.DIFFERENCE_METRICS`, over the
  per-seed tables of `count_tables`."""
  return {(a, b, metric): stats.paired_difference(
      tables[a][:_runs(tables, a, b)], tables[b][:_runs(tables, a, b)], metric)
          for a, b in comparisons for metric in report.DIFFERENCE_METRICS}


# The comparisons of the ablation, (A, B): A − B, each a claim of the paper.
COMPARISONS = (
    ("sft_web", CONTROL),        # the cause: mismatched captions teach hallucination
    ("sft_vqa", "sft_web"),      # the mitigation: VQA SFT lowers it
    ("dpo", "sft_vqa"),          # preference training on corrections lowers it
    ("ddpo_mean", "sft_vqa"),
    ("ddpo_mean", "dpo"),        # dense (γ > 1) against plain DPO
    ("ddpo_sum", "ddpo_mean"),   # the released scripts' sum against the paper's mean
    ("ddpo_crop", "ddpo_mean"),  # random cropping (the ablation) against none
)


def write_report(config: Any, root: pathlib.Path, results: report.Results,
                 labels: dict[str, str], seeds: Sequence[int], summary: dict) -> None:
  """ablation.md / ablation.csv / ablation_per_seed.csv / ablation_differences.csv /
  ablation.png."""
  shown = models(config)
  table = report.markdown_table(results, shown, labels)
  tables = {m: count_tables(root, m, seeds) for m in shown}
  comparisons = [(a, b) for a, b in COMPARISONS if a in shown and b in shown]
  differences = paired_differences(tables, comparisons)
  intervals = {}
  for m in shown:
    for metric in report.DIFFERENCE_METRICS:
      value = stats.interval(tables[m][:_runs(tables, m)], metric)
      intervals[(m, metric)] = (value.low, value.high)
  feedback = summary["feedback"]
  corrected = [feedback[str(s)]["corrected"] for s in seeds]
  sampled = [feedback[str(s)]["samples"] for s in seeds]
  text = "\n".join([
      f"# RLHF-V demo: ablation over {len(seeds)} seed(s) {list(seeds)}", "",
      f"Greedy descriptions of {summary['eval_scenes']} held-out scenes; mean ± sample std "
      f"over seeds. The base model(s) are trained once (seed {summary['base_seed']}) and "
      "shared by every seed, hence n=1 on their rows. CHAIR_s: share of descriptions with "
      "a hallucinated object; CHAIR_i: share of object mentions that are hallucinated; "
      "recall: share of ground-truth objects mentioned; attribute errors: wrong "
      "size/position among mentions of present objects.", "", table, "",
      "Paired differences A − B, mean over seeds, with 95% bootstrap intervals (held-out "
      "scenes resampled within each seed; `rlhfv_jax/demo/stats.py`). * : the interval "
      "excludes 0; (every seed): each seed's own difference has that sign.", "",
      report.differences_table(differences, comparisons, labels), "",
      f"Feedback per seed: {corrected} corrected of {sampled} sampled descriptions "
      f"(temperature {config.demo.sampling.temperature}); DDPO γ={config.ddpo.gamma:g}, "
      f"β={config.ddpo.beta:g}, segment mode {config.ddpo.segment_mode!r}.",
      f"Total time: {summary['total_seconds']:.0f}s.", ""])
  (root / "ablation.md").write_text(text)
  report.write_csv(root / "ablation.csv", results, shown, labels)
  report.write_per_seed_csv(root / "ablation_per_seed.csv", results, shown)
  report.write_differences_csv(root / "ablation_differences.csv", differences)
  report.plot(root / "ablation.png", results, shown, labels,
              f"RLHF-V demo, {len(seeds)} seed(s), {summary['eval_scenes']} held-out scenes; "
              "95% bootstrap intervals", intervals=intervals)


# ----------------------------------------------------------------------------- sweep

def select_vqa(candidates: dict[int, dict[str, float]], base: dict[str, float]) -> int:
  """The VQA-stage candidate to use, from validation-scene metrics: the lowest CHAIR_i
  (then CHAIR_s) among those that keep object recall >= 0.9x and length >= 0.8x the web
  base's (a stage that makes the model say less is not a mitigation); if none does, the
  one with the highest recall. Pass only eligible (non-diagnostic) candidates."""
  keeps = [k for k, m in candidates.items()
           if m["recall"] >= 0.9 * base["recall"] and m["avg_words"] >= 0.8 * base["avg_words"]]
  if not keeps:
    return max(candidates, key=lambda k: candidates[k]["recall"])
  return min(keeps, key=lambda k: (candidates[k]["chair_i"], candidates[k]["chair_s"]))


def run_sweep(config: Any, root: pathlib.Path) -> dict[str, Any]:
  """The studies (module docstring); writes sweep.md / sweep.csv / sweep.png."""
  sweep = config.demo.sweep
  seeds = [int(s) for s in config.demo.seeds]
  candidates = list(sweep.vqa_candidates)
  budget_runs = [f"{arm}%{b}" for arm in sweep.arms for b in sweep.budgets]
  ctx = _context(config, root, 3 + 2 * config.demo.control_base + 1 + 2 * len(candidates)
                 + len(seeds) * (5 + len(budget_runs)))
  base = run_base(ctx)  # the web base and (demo.control_base) the control
  labels = model_labels(config)
  # 1. The VQA stage: every candidate from the web base, scored on validation scenes.
  first = seed_paths(root, seeds[0])
  val: dict[str, dict[str, float]] = {}
  web_stage = ctx.stage_config(seeds[0], "sft_web")
  ctx.progress.stage("validation", "sft_web", lambda: ctx.evaluate(
      first, "sft_web", runner.run(web_stage, str(base_paths(root).run("sft_web"))),
      sampler.Sampler.from_config(web_stage), "validation", val, on_validation=True))
  for k in range(len(candidates)):
    name = f"sft_vqa#{k}"
    ctx.progress.stage("validation", f"data#{k}", lambda k=k: datasets.write_vqa_data(
        config, first, ctx.train_scenes, ctx.train_images, seeds[0], candidate=k))
    ctx.progress.stage("validation", name, lambda name=name: ctx.train_and_eval(
        seeds[0], first, name, "validation", val, on_validation=True))
  chosen = select_vqa({k: val[f"sft_vqa#{k}@val"] for k, c in enumerate(candidates)
                       if not dict(c).get("diagnostic", False)}, val["sft_web@val"])
  logging.info("demo sweep: VQA candidate %d chosen on validation scenes: %s", chosen,
               dict(candidates[chosen]))
  # 2. Per seed: the chosen VQA stage, feedback, and each arm on each feedback budget.
  seed_config = with_vqa_candidate(config, chosen)
  ctx.config = seed_config
  w = config.demo.world
  per_seed: dict[int, dict[str, Any]] = {}
  for seed in seeds:
    paths, label = seed_paths(root, seed), f"seed {seed}"
    feedback_scenes = world.sample_scenes(
        20_000 + seed, w.num_feedback_scenes, f"feedback{seed}", w.min_objects,
        w.max_objects, exclude=list(ctx.eval_scenes) + list(ctx.val_scenes))
    out: dict[str, Any] = {"metrics": {}}
    ctx.progress.stage(label, "data", lambda: datasets.write_vqa_data(
        seed_config, paths, ctx.train_scenes, ctx.train_images, seed))
    sft_params, sample = ctx.progress.stage(label, "sft_vqa", lambda: ctx.train_and_eval(
        seed, paths, "sft_vqa", label, out["metrics"]))
    out["feedback"] = ctx.progress.stage(label, "feedback", lambda: datasets.collect_feedback(
        seed_config, paths, sft_params, sample, feedback_scenes, seed))
    out["budgets"] = ctx.progress.stage(label, "budgets", lambda: datasets.write_budget_subsets(
        paths, sweep.budgets, seed))
    ctx.progress.stage(label, "reference", lambda: runner.run(
        ctx.stage_config(seed, "reference"), str(paths.run("reference"))))
    for name in budget_runs:
      ctx.progress.stage(label, name, lambda name=name: ctx.train_and_eval(
          seed, paths, name, label, out["metrics"]))
    per_seed[seed] = out
  summary = {
      "seeds": seeds, "base_seed": int(config.demo.base_seed),
      "base": base["metrics"], "validation": val, "vqa_chosen": chosen,
      "vqa_candidates": [dict(c) for c in candidates],
      "per_seed": {str(s): v for s, v in per_seed.items()},
      "eval_scenes": len(ctx.eval_scenes), "val_scenes": len(ctx.val_scenes),
      "timings": ctx.progress.timings,
      "total_seconds": round(time.monotonic() - ctx.progress.start, 1),
  }
  (root / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
  write_sweep_report(config, root, summary, labels)
  logging.info("demo sweep finished in %.0fs:\n%s", summary["total_seconds"],
               (root / "sweep.md").read_text())
  return summary


def write_sweep_report(config: Any, root: pathlib.Path, summary: dict,
                       labels: dict[str, str]) -> None:
  """sweep.md (the control base, the VQA selection, the budget sweep with paired
  intervals), sweep.csv, sweep_differences.csv and sweep.png."""
  sweep, seeds = config.demo.sweep, summary["seeds"]
  bases = [m for m in BASE_MODELS if m in summary["base"]]
  cause_pairs = [("sft_web", CONTROL)] if CONTROL in bases else []
  cause = paired_differences({m: count_tables(root, m, seeds) for m in bases}, cause_pairs)
  base_rows = {m: {"base": summary["base"][m]} for m in bases}
  num_candidates = len(sweep.vqa_candidates)
  val_rows = {name: {"validation": values} for name, values in summary["validation"].items()}
  val_names = ["sft_web@val"] + [f"sft_vqa#{k}@val" for k in range(num_candidates)]
  val_labels = {"sft_web@val": labels["sft_web"]}
  val_labels.update({f"sft_vqa#{k}@val": labels[f"sft_vqa#{k}"] + (
      " (chosen)" if k == summary["vqa_chosen"] else "") for k in range(num_candidates)})
  ordered = ["sft_vqa"] + [f"{arm}%{b}" for arm in sweep.arms for b in sweep.budgets]
  runs = {name: {s: summary["per_seed"][str(s)]["metrics"][name] for s in seeds}
          for name in ordered}
  labels = dict(labels, sft_vqa=labels["sft_vqa"] + " (the chosen candidate)")
  tables = {name: count_tables(root, name, seeds) for name in ordered}
  dense, plain = sweep.arms[-1], sweep.arms[0]
  comparisons = [(f"{dense}%{b}", f"{plain}%{b}") for b in sweep.budgets]
  comparisons += [(f"{arm}%{b}", "sft_vqa") for arm in sweep.arms for b in sweep.budgets]
  differences = paired_differences(tables, comparisons)
  pairs = {s: summary["per_seed"][str(s)]["budgets"] for s in seeds}
  text = "\n".join([
      f"# RLHF-V demo studies over {len(seeds)} seed(s) {seeds}", "",
      f"## The cause: web captions against clean ones ({summary['eval_scenes']} held-out "
      "scenes)", "",
      report.markdown_table(base_rows, bases, labels), "",
      report.differences_table(cause, cause_pairs, labels) if cause_pairs else
      "(no control base: demo.control_base is off)", "",
      f"## The VQA stage, chosen on {summary['val_scenes']} validation scenes", "",
      "Rule (`pipeline.select_vqa`): the lowest CHAIR_i among candidates keeping recall "
      ">= 0.9x and length >= 0.8x the web base's; diagnostic candidates are never chosen.",
      "",
      report.markdown_table(val_rows, val_names, val_labels), "",
      "## Feedback budget: DPO and DDPO on a share of each seed's pairs", "",
      f"Pairs per seed and budget: {pairs}. Held-out scenes; mean ± std over seeds.", "",
      report.markdown_table(runs, ordered, labels), "",
      "Paired differences with 95% bootstrap intervals (as in ablation.md):", "",
      report.differences_table(differences, comparisons, labels), "",
      f"Total time: {summary['total_seconds']:.0f}s.", ""])
  (root / "sweep.md").write_text(text)
  report.write_csv(root / "sweep.csv", runs, ordered, labels)
  report.write_differences_csv(root / "sweep_differences.csv", {**differences, **cause})
  plot_budgets(root / "sweep.png", sweep, tables, seeds)


def plot_budgets(path: pathlib.Path, sweep: Any, tables: dict[str, list[np.ndarray]],
                 seeds: Sequence[int]) -> None:
  """CHAIR_i and object recall against the feedback budget, one line per arm, 95%
  bootstrap intervals as error bars, the VQA-SFT start as a dashed line."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after choosing the headless backend

  fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
  for ax, metric, title in zip(axes, ("chair_i", "recall"),
                               ("CHAIR_i (lower is better)", "object recall (higher is better)")):
    start = stats.interval(tables["sft_vqa"], metric)
    ax.axhline(start.estimate, color="gray", linestyle="--", label="VQA-SFT start")
    for k, arm in enumerate(sweep.arms):
      values = [stats.interval(tables[f"{arm}%{b}"], metric) for b in sweep.budgets]
      x = np.asarray(sweep.budgets, float) * (1 + 0.03 * (k - 0.5))  # dodge the bars
      y = np.array([v.estimate for v in values])
      err = np.array([[v.estimate - v.low for v in values],
                      [v.high - v.estimate for v in values]]).clip(min=0)
      ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(sweep.budgets), [f"{b}%" for b in sweep.budgets])
    ax.set_xlabel("feedback pairs used")
    ax.set_title(title, fontsize=10)
  axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
  fig.suptitle(f"Feedback budget, {len(seeds)} seed(s), 95% bootstrap intervals", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
