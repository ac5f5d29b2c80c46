"""The iterate study (``demo.study = "iterate"``, configs/demo.py:iterate): does AI feedback
work in the miniature, and does iterating it on-policy (RLAIF-V's loop, with RLHF-V's
fine-grained corrections) reach what one round of oracle corrections does?

Per seed, after the chain's base model, VQA stage and the oracle's one round of
corrections (the ablation's ``ddpo_mean``, `chain`; shared with an ablation run in the
same workdir):

  labeler     its data (VQA pairs, no captions) and its training from the web base
  ai data     the prompt set: the first ``demo.iterate.num_scenes`` of the seed's
              feedback scenes (the scenes the oracle's round sampled), their images and
              description prompts (``ai_feedback/questions.jsonl``)
  ai round k  one round of `rlhfv_jax.stages.iterate` (``ai_feedback/rounds/round_<k>``):
              ``num_samples`` descriptions per scene from the current policy -> the
              `label` stage -> the export -> the policy's reference log-probs -> DDPO
              with the oracle arm's settings; the new policy is scored on the held-out
              scenes (evaluation name "ai_round_<k>")
  ranking     round 1's RLAIF-V ranking pairs alone (``ai_feedback/ranking``): DDPO from
              sft_vqa on them ("ai_ranking"), against round 1's corrections

The labeler never sees the world's truth: it is the seed's web base fine-tuned on VQA
pairs alone (``labeler``, ``demo.labeler``: a model trained on the miniature's VQA data,
whose presence questions are exactly the claims' questions), kept fixed over the
rounds, and the claims are read from the descriptions' text by the
project's rule extractor over the world's 20 colour-shape objects
(``claims_vocabulary.txt``). Only this report compares its verdicts with the truth:
claim-level precision and recall of the claims it rejects (`labeler_table`).

Writes iterate_results.json and iterate.md / iterate.csv / iterate_per_seed.csv /
iterate_differences.csv / iterate.png; every seed's rounds also have the iterate
stage's own iterate_report.{md,json,png}.
"""

from __future__ import annotations

import collections
import json
import pathlib
import time
from typing import Any

import numpy as np
from absl import logging

from rlhfv_jax import jsonl, sampler
from rlhfv_jax.demo import ablation, chain, context, corpora, datasets, report, world
from rlhfv_jax.demo.context import Context
from rlhfv_jax.demo.runs import (AI_RANKING, LABELER, ORACLE_ARM, SFT_VQA, Run, ai_paths, ai_round,
                                 claims_vocabulary_path, model_labels, seed_paths)
from rlhfv_jax.evals import bootstrap
from rlhfv_jax.stages import iterate, runner
from rlhfv_jax.stages import label as label_stage

# Per answer: its claims, those false in the world, those the labeler rejects, and both.
LABELER_FIELDS = ("claims", "false", "rejected", "rejected_false")
LABELER_RATIOS = {
    "precision": ("rejected_false", "rejected"),  # of the rejected claims, the false ones
    "recall": ("rejected_false", "false"),        # of the false claims, the rejected ones
    "false_share": ("false", "claims"),           # the policy's claims that are false
}
RATIO_TITLES = {"precision": "precision", "recall": "recall",
                "false_share": "false claims (truth)"}


def models(config: Any) -> tuple[str, ...]:
  """The report's rows: the VQA start, the oracle's round, each AI round, ranking pairs."""
  return ((SFT_VQA, ORACLE_ARM) + tuple(ai_round(k) for k in
                                        range(1, config.demo.iterate.rounds + 1))
          + (AI_RANKING,))


def labels(config: Any) -> dict[str, str]:
  out = model_labels(config)
  out[ORACLE_ARM] = "+ oracle corrections, 1 round (DDPO)"
  for k in range(1, config.demo.iterate.rounds + 1):
    out[ai_round(k)] = f"+ AI corrections, {k} round{'s' * (k > 1)}"
  out[AI_RANKING] = "+ AI ranking pairs, 1 round"
  return out


def comparisons(config: Any) -> list[tuple[str, str]]:
  """(A, B): A − B. The first is the goal: the last AI round against the oracle's."""
  last = ai_round(config.demo.iterate.rounds)
  out = [(last, ORACLE_ARM), (ai_round(1), ORACLE_ARM), (ai_round(1), SFT_VQA),
         (ORACLE_ARM, SFT_VQA), (AI_RANKING, ai_round(1))]
  if last != ai_round(1):
    out.insert(2, (last, ai_round(1)))
  return out


def num_stages(config: Any) -> int:
  """The progress stages after the shared ones."""
  per_seed = (chain.num_stages(config, (Run(ORACLE_ARM),)) + 3 + config.demo.iterate.rounds
              + 1)
  return len(config.demo.seeds) * per_seed


# The class of the descriptions' count sentences ("There are three objects ..."): a count
# claim, "Are there three objects in the image?".
ANY_OBJECT = "object"


def claims_vocabulary() -> tuple[str, ...]:
  """The world's object classes as synonyms-file lines: "red circle", ..., and "object"
  (the plurals and the words around them are the rule extractor's business)."""
  return tuple(f"{color} {shape}" for color in world.COLORS
               for shape in world.SHAPES) + (ANY_OBJECT,)


def write_prompt_set(ctx: Context, seed: int) -> list[world.Scene]:
  """The AI rounds' questions file and images (module docstring); returns its scenes."""
  scenes = chain.feedback_scenes(ctx, seed)[:ctx.config.demo.iterate.num_scenes]
  ai = ai_paths(ctx.root, seed)
  ai.images.mkdir(parents=True, exist_ok=True)
  images = {s.scene_id: world.encode_png(world.render(s, ctx.config.demo.world.image_size))
            for s in scenes}
  lines = []
  for scene, prompt in zip(scenes, corpora.description_prompts(len(scenes))):
    (ai.images / f"{scene.scene_id}.png").write_bytes(images[scene.scene_id])
    lines.append(json.dumps({"id": scene.scene_id, "image": f"{scene.scene_id}.png",
                             "question": prompt}, sort_keys=True) + "\n")
  ai.questions.write_text("".join(lines))
  return scenes


def claim_is_true(claim: dict[str, Any], scene: world.Scene) -> bool:
  """Whether a labelled claim (a line of the label stage's verdicts) holds in the scene:
  a presence claim when the colour-shape object is there, an absence claim when it is
  not, a count claim when the scene holds that many of it (of any kind for "object")."""
  if claim["object"] == ANY_OBJECT:
    present = len(scene.objects)
  else:
    color, shape = claim["object"].split()
    present = sum(o.color == color and o.shape == shape for o in scene.objects)
  if claim["kind"] == "count":
    return present == claim["count"]
  return (present > 0) == (claim["expected"] == "yes")


def labeler_table(verdicts: pathlib.Path, scenes: dict[str, world.Scene]) -> np.ndarray:
  """[answers, len(LABELER_FIELDS)] counts of the labeler's verdicts against the truth,
  one row per labelled answer (item ids are ``<scene id>#<sample>``)."""
  rows = []
  for _, line in jsonl.read_objects(verdicts):
    scene = scenes[line["item_id"].rsplit("#", 1)[0]]
    false = [not claim_is_true(c, scene) for c in line["claims"]]
    rejected = [bool(c["failed"]) for c in line["claims"]]
    rows.append((len(false), sum(false), sum(rejected),
                 sum(f and r for f, r in zip(false, rejected))))
  return np.asarray(rows, np.float64).reshape(len(rows), len(LABELER_FIELDS))


def _labeler_ratio(sums: np.ndarray, name: str) -> np.ndarray:
  numerator, denominator = (sums[..., LABELER_FIELDS.index(f)] for f in LABELER_RATIOS[name])
  return bootstrap.ratio(numerator, denominator)


def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
  """Every seed's chain, oracle round, AI rounds and ranking run, then the report.

  Returns:
    The contents of iterate_results.json.
  """
  config, root = ctx.config, ctx.root
  seeds = [int(s) for s in config.demo.seeds]
  claims_vocabulary_path(root).write_text("\n".join(claims_vocabulary()) + "\n")
  metrics: dict[int, dict[str, dict[str, float]]] = {}
  rounds: dict[int, list[dict[str, Any]]] = {}
  feedback: dict[int, dict[str, Any]] = {}
  labeler: dict[int, dict[int, np.ndarray]] = {}
  for seed in seeds:
    metrics[seed] = chain.train_bases(ctx, seed)
    prepared = chain.prepare_feedback(ctx, seed)
    feedback[seed] = prepared.feedback
    metrics[seed].update(prepared.metrics)
    metrics[seed].update(chain.train_preference(ctx, seed, (Run(ORACLE_ARM),)))
    rounds[seed], labeler[seed] = run_ai_feedback(ctx, seed, metrics[seed])
  shown = models(config)
  results = {m: {s: metrics[s][m] for s in seeds} for m in shown}
  summary = {
      "seeds": seeds, "shared_seed": int(config.demo.shared_seed),
      "models": {m: {"label": labels(config)[m],
                     "per_seed": {str(s): v for s, v in results[m].items()}} for m in shown},
      "oracle_feedback": {str(s): f for s, f in feedback.items()},
      "rounds": {str(s): r for s, r in rounds.items()},
      "labeler": {str(s): {str(k): dict(zip(LABELER_FIELDS, table.sum(0).tolist()))
                           for k, table in per_round.items()}
                  for s, per_round in labeler.items()},
      "perception": shared["perception"], "eval_scenes": len(ctx.eval_scenes),
      "timings": ctx.progress.timings,
      "total_seconds": round(time.monotonic() - ctx.progress.start, 1),
  }
  (root / "iterate_results.json").write_text(json.dumps(summary, indent=2, sort_keys=True,
                                                        default=str))
  write_report(config, root, results, labeler, summary)
  logging.info("demo iterate study finished in %.0fs:\n%s", summary["total_seconds"],
               (root / "iterate.md").read_text())
  return summary


def run_ai_feedback(ctx: Context, seed: int, metrics_out: dict[str, dict[str, float]]
                    ) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
  """The seed's AI rounds and ranking run (module docstring), each new policy scored
  into `metrics_out`. Returns the iterate stage's round rows and, per round, the
  labeler's counts against the truth (`labeler_table`)."""
  config, label = ctx.config, f"seed {seed}"
  paths, ai = seed_paths(ctx.root, seed), ai_paths(ctx.root, seed)
  labeler = Run(LABELER)
  ctx.progress.stage(label, "labeler data", lambda: datasets.write_labeler_data(
      config, paths, ctx.train_scenes, ctx.train_images, seed))
  ctx.progress.stage(label, labeler.name, lambda: runner.run(
      ctx.stage_config(seed, labeler), str(paths.run(labeler))))
  scenes = ctx.progress.stage(label, "ai data", lambda: write_prompt_set(ctx, seed))
  by_id = {s.scene_id: s for s in scenes}
  rounds = ctx.iterate_config(seed)

  def score(name: str, params: Any, ddpo_config: Any) -> dict[str, float]:
    metrics_out[name] = context.evaluate(config, paths, name, params,
                                         sampler.Sampler.from_config(ddpo_config),
                                         ctx.eval_scenes, ctx.eval_images)
    ctx.log_metrics(label, name, metrics_out)
    return metrics_out[name]

  rows, tables = [], {}
  for k in range(1, config.demo.iterate.rounds + 1):
    row = ctx.progress.stage(label, f"ai round {k}", lambda k=k: iterate.run_round(
        rounds, ai.rounds, k, evaluate=lambda k, params, cfg: score(ai_round(k), params, cfg)))
    verdicts = iterate.round_dir(ai.rounds, k) / "label" / label_stage.VERDICTS_FILE
    tables[k] = labeler_table(verdicts, by_id)
    row["labeler_vs_truth"] = dict(zip(LABELER_FIELDS, tables[k].sum(0).tolist()))
    rows.append(row)
    iterate.write_report(ai.rounds, rows)
  ctx.progress.stage(label, AI_RANKING, lambda: train_ranking(ctx, seed, rounds, score))
  return rows, tables


def train_ranking(ctx: Context, seed: int, rounds: Any, score: Any) -> None:
  """DDPO from sft_vqa (round 1's policy and reference) on round 1's ranking pairs
  alone, scored as "ai_ranking"."""
  ai = ai_paths(ctx.root, seed)
  first = iterate.round_dir(ai.rounds, 1)
  exported = iterate.export_once(ai.ranking, first / "annotations.sqlite",
                                 first / "label" / label_stage.PAIRS_FILE,
                                 sources=("ai_ranking",))
  if not exported["pairs"]:
    raise RuntimeError(f"seed {seed}: round 1 formed no ranking pair "
                       f"({first / 'label' / label_stage.PAIRS_FILE} is empty): no two "
                       "answers to one scene differ by a failed claim; raise "
                       "demo.iterate.num_samples or num_scenes")
  params, ddpo = iterate.train_on_export(rounds, iterate.policy_init(rounds, ai.rounds, 1),
                                         ai.ranking)
  score(AI_RANKING, params, ddpo)


def labeler_rows(labeler: dict[int, dict[int, np.ndarray]], rounds: int) -> list[str]:
  """The labeler's table: per round, pooled counts and each ratio with its two-level
  interval over seeds and answers."""
  seeds = sorted(labeler)
  lines = ["| Round | Answers | Claims | " + " | ".join(RATIO_TITLES[r] for r in LABELER_RATIOS)
           + " |", "|" + "---|" * (3 + len(LABELER_RATIOS))]
  for k in range(1, rounds + 1):
    tables = [labeler[s][k] for s in seeds]
    cells = []
    for name in LABELER_RATIOS:
      d = bootstrap.interval(tables, lambda sums, name=name: _labeler_ratio(sums, name),
                             resample_groups=True)
      cells.append("n/a" if np.isnan(d.estimate) else
                   f"{d.estimate:.3f} [{d.low:.3f}, {d.high:.3f}]")
    lines.append(f"| {k} | {sum(len(t) for t in tables)} | "
                 f"{int(sum(t[:, 0].sum() for t in tables))} | " + " | ".join(cells) + " |")
  return lines


def goal_line(difference: Any, last: int) -> str:
  """Whether the goal holds: the last AI round's CHAIR_s at or below the oracle's."""
  d = difference
  verdict = "holds" if d.estimate <= 0 else "does not hold"
  strength = (" (established: the interval excludes 0 and every seed agrees)" if d.established
              else " (not established: the interval includes 0 or a seed disagrees)")
  return (f"**Goal: {last} round(s) of AI-feedback DDPO at or below one round of oracle "
          f"corrections in CHAIR_s — {verdict}**: Δ {d.estimate:+.3f} [{d.low:+.3f}, "
          f"{d.high:+.3f}], per seed " + ", ".join(f"{x:+.3f}" for x in d.per_seed)
          + strength + ".")


def write_report(config: Any, root: pathlib.Path, results: report.Results,
                 labeler: dict[int, dict[int, np.ndarray]], summary: dict[str, Any]) -> None:
  """iterate.md / .csv / _per_seed.csv / _differences.csv / .png."""
  seeds, shown, names = summary["seeds"], models(config), labels(config)
  it = config.demo.iterate
  tables = {m: ablation.count_tables(root, m, seeds) for m in shown}
  pairs = comparisons(config)
  differences = ablation.paired_differences(tables, pairs)
  per_round = collections.defaultdict(collections.Counter)
  every_round = [row for rows in summary["rounds"].values() for row in rows]
  for row in every_round:
    lab = row["label"]
    per_round[row["round"]].update(
        answers=lab.get("items", 0) + lab.get("items_unlabelled", 0),
        no_claim=lab.get("skipped", 0), corrected=lab.get("corrected", 0),
        emptied=lab.get("emptied", 0), ranking=lab.get("ranking_pairs", 0))
  round_lines = ["| Round | Answers | No claim (skipped) | Corrected (pairs) | Emptied | "
                 "Ranking pairs |", "|---|---|---|---|---|---|"]
  for k, c in sorted(per_round.items()):
    round_lines.append(f"| {k} | {c['answers']} | {c['no_claim']} | {c['corrected']} | "
                       f"{c['emptied']} | {c['ranking']} |")
  oracle = [summary["oracle_feedback"][str(s)]["corrected"] for s in seeds]
  text = "\n".join([
      f"# RLHF-V demo: AI feedback, iterated ({len(seeds)} seed(s) {list(seeds)})", "",
      f"Greedy descriptions of {summary['eval_scenes']} held-out scenes; mean ± sample std "
      "over seeds. The VQA start is each seed's sft_vqa; the oracle's round is the "
      "ablation's DDPO arm (corrections from the world's truth); each AI round samples "
      f"{it.num_samples} descriptions of {it.num_scenes} feedback scenes from the current "
      "policy, which the seed's labeler (its web base tuned on VQA pairs alone) labels "
      "claim by claim (P(Yes) vs P(No)), and "
      "trains DDPO on the fine-grained corrections with the policy as reference "
      "(`rlhfv_jax/demo/iteration.py`).", "",
      report.markdown_table(results, shown, names), "",
      "Paired differences A − B, mean over seeds, with two-level 95% bootstrap intervals "
      "(seeds, then held-out scenes; `rlhfv_jax/demo/stats.py`). * : the interval excludes "
      "0; (every seed): each seed's own difference has that sign; both: **established**.",
      "", report.differences_table(differences, pairs, names), "",
      goal_line(differences[(pairs[0][0], ORACLE_ARM, "chair_s")], it.rounds), "",
      "## The labeler against the world's truth", "",
      "Claim level, pooled over seeds: precision = rejected claims that are false / "
      "rejected claims; recall = false claims it rejects / false claims (two-level 95% "
      "bootstrap intervals over seeds and answers).", "",
      *labeler_rows(labeler, it.rounds), "",
      "## The rounds (summed over seeds)", "", *round_lines, "",
      f"The oracle's round: {oracle} corrected descriptions per seed.", "",
      "The AI rounds, all seeds: " + iterate.time_shares(every_round), "",
      f"Total time: {summary['total_seconds']:.0f}s.", ""])
  ablation.write_files(root / "iterate", text, results, shown, names, tables, differences,
                       f"RLHF-V demo, AI feedback: {len(seeds)} seed(s), "
                       f"{summary['eval_scenes']} held-out scenes; 95% bootstrap intervals")
