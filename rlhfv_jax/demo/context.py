"""What every run of a demo study shares: the scenes and their images, the tokenizer,
the progress log, and how a run is trained (`rlhfv_jax.stages.runner.run`) and
evaluated (greedy descriptions of held-out scenes, scored by `scoring`).
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

from rlhfv_jax import sampler
from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax.demo import corpora, datasets, scoring, settings, vocabulary, world
from rlhfv_jax.demo.runs import Run, SeedPaths
from rlhfv_jax.stages import config_validation, iterate, runner


def evaluate(config: Any, paths: SeedPaths, name: str, params: Any, sample: sampler.Sampler,
             eval_scenes: Sequence[world.Scene], eval_images: dict[str, bytes],
             temperature: float = 0.0, seed: int = 0) -> dict[str, float]:
  """Greedy (or with `temperature` sampled) descriptions of the scenes -> CHAIR-style
  metrics (and the JSONL log ``paths.eval(name)``, whose per-scene counts the report's
  intervals resample)."""
  prompts = corpora.description_prompts(len(eval_scenes))
  e = config.demo.eval
  rng = jax.random.PRNGKey(seed) if temperature > 0 else None
  samples = sample(params, [eval_images[s.scene_id] for s in eval_scenes], prompts,
                   max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                   temperature=temperature, rng=rng)
  texts, finished = samples.texts, samples.finished
  scores = scoring.score_responses(texts, eval_scenes)
  out = paths.eval(name)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("w", encoding="utf-8") as f:
    for scene, prompt, text, done, score in zip(eval_scenes, prompts, texts, finished, scores):
      f.write(json.dumps({"scene_id": scene.scene_id, "prompt": prompt, "response": text,
                          "finished": done, **dataclasses.asdict(score)}, sort_keys=True)
              + "\n")
  result = scoring.aggregate(scores)
  result["unfinished"] = sum(not d for d in finished) / len(finished)
  return result


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


@dataclasses.dataclass
class Context:
  """What every stage of a study shares."""

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

  def stage_config(self, seed: int, run: Run) -> ml_collections.ConfigDict:
    """The run's validated runner config (`settings.stage_config`)."""
    tokenizer = tokenizer_lib.SentencePieceTokenizer(self.tokenizer_path)
    stage = settings.stage_config(self.config, self.root, seed, run, self.tokenizer_path,
                                  tokenizer)
    config_validation.validate_config(stage)
    return stage

  def iterate_config(self, seed: int) -> ml_collections.ConfigDict:
    """The seed's validated AI-feedback rounds config (`settings.iterate_config`)."""
    tokenizer = tokenizer_lib.SentencePieceTokenizer(self.tokenizer_path)
    rounds = settings.iterate_config(self.config, self.root, seed, self.tokenizer_path,
                                     tokenizer)
    iterate.validate(rounds)
    return rounds

  def train_and_eval(self, seed: int, paths: SeedPaths, run: Run, label: str,
                     metrics_out: dict, on_validation: bool = False, sampled: bool = False
                     ) -> tuple[Any, sampler.Sampler]:
    """Trains a run through `runner.run` (a finished run resumes: its params come back)
    and evaluates it on the held-out scenes, or with `on_validation` on the validation
    scenes (as its ``validation_name``); with `sampled` also its sampled held-out
    descriptions (``sampled_name``, at ``demo.eval.probe_temperature``)."""
    stage = self.stage_config(seed, run)
    params = runner.run(stage, str(paths.run(run)))
    sample = sampler.Sampler.from_config(stage)
    self.evaluate(paths, run, params, sample, label, metrics_out, on_validation)
    if sampled:
      name = run.sampled_name
      metrics_out[name] = evaluate(self.config, paths, name, params, sample, self.eval_scenes,
                                   self.eval_images, self.config.demo.eval.probe_temperature,
                                   seed)
      self.log_metrics(label, name, metrics_out)
    return params, sample

  def evaluate(self, paths: SeedPaths, run: Run, params: Any, sample: sampler.Sampler,
               label: str, metrics_out: dict, on_validation: bool = False) -> None:
    """`evaluate` into ``metrics_out[run.name]`` (or its ``validation_name``)."""
    if on_validation:
      scenes, images, name = self.val_scenes, self.val_images, run.validation_name
    else:
      scenes, images, name = self.eval_scenes, self.eval_images, run.name
    metrics_out[name] = evaluate(self.config, paths, name, params, sample, scenes, images)
    self.log_metrics(label, name, metrics_out)

  @staticmethod
  def log_metrics(label: str, name: str, metrics_out: dict) -> None:
    logging.info("demo: %s, %s: %s", label, name, json.dumps(
        {k: round(v, 3) for k, v in metrics_out[name].items()}))


def make_context(config: Any, root: pathlib.Path, total_stages: int) -> Context:
  """Scenes (training, held-out, validation: pairwise disjoint), images and tokenizer."""
  demo, w = config.demo, config.demo.world
  tokenizer_path = vocabulary.make_tokenizer_file(
      root / "tokenizer.model", config.data.system_message, demo.vocab_size)
  eval_scenes = world.sample_scenes(w.eval_seed, w.num_eval_scenes, "eval", w.min_objects,
                                    w.max_objects)
  val_scenes = world.sample_scenes(demo.validation.seed, demo.validation.num_scenes, "val",
                                   w.min_objects, w.max_objects, exclude=eval_scenes)
  train_scenes = world.sample_scenes(10_000 + int(demo.shared_seed), w.num_train_scenes,
                                     "train", w.min_objects, w.max_objects,
                                     exclude=list(eval_scenes) + list(val_scenes))
  return Context(config, root, tokenizer_path, train_scenes,
                 datasets.render_all(train_scenes, w.image_size), eval_scenes,
                 datasets.render_all(eval_scenes, w.image_size), Progress(total_stages),
                 val_scenes, datasets.render_all(val_scenes, w.image_size))
