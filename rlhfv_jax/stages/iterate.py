"""The `iterate` stage: on-policy rounds of AI feedback and DDPO (RLAIF-V's loop, with
RLHF-V's fine-grained corrections), unattended, in one workdir.

  python -m rlhfv_jax.main --config configs/llava15_iterate.py --workdir /runs/iterate \\
      --config.init.params=checkpoint --config.init.checkpoint_dir=/runs/llava15_7b_sft \\
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \\
      --config.sample.images=/data/feedback_images

Round k (``round_<k>/``, k = 1 .. ``iterate.rounds``) starts from the current policy
(round 1: ``init``; then the previous round's ``ddpo``) and runs, each step a stage of
its own through `runner` (so each writes its ``config.json`` and resumes on its own):

  sample     K answers per prompt from the policy into ``round_<k>/annotations.sqlite``
             (``sample`` section; its seed + k, so every round draws new answers)
  label      the labeler (the policy itself, or ``iterate.labeler_*``) proposes
             corrections and ranking pairs (``label`` section)
  (review)   with ``iterate.stop_after_label``: the run stops here, once per round, for
             people to review the proposals in the annotation app; the next run continues
  export     the store's export (``round_<k>/export``): the fine-grained corrections,
             and with ``iterate.ranking_pairs`` the ranking pairs; a round whose export
             holds no preference pair is refused
  reference  the policy's log-probs of the round's pairs (``precompute_ref``: the current
             policy is the reference, as RLAIF-V's rounds do)
  ddpo       DDPO from the policy on the round's pairs only
  eval       ``hallucination_eval`` of the new policy, when ``iterate.evaluate``

``iterate_report.md`` / ``.json`` / ``.png`` gather per round the labeler's statistics
(the share of claims it rejects: the policy's hallucination by its judgement), the pair
counts and the benchmark numbers. Killing the run anywhere and re-running continues at
the same step with the same answers (every step is resumable, and a finished step is
found finished). A round only ever trains on its own store's pairs.
"""

from __future__ import annotations

import copy
import json
import pathlib
import shutil
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging

from rlhfv_jax.annotate import export as annotate_export
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.stages import config_validation, runner
from rlhfv_jax.stages import label as label_stage

REPORT = "iterate_report"
STEPS = ("sample", "label", "export", "reference", "ddpo", "eval")  # a round's, in order
REVIEW_MARK = "REVIEW_STOP"  # written when a run stops for review; the next one goes on


def round_dir(root: pathlib.Path, k: int) -> pathlib.Path:
  return root / f"round_{k}"


def policy_init(config: Any, root: pathlib.Path, k: int) -> dict[str, Any]:
  """The ``init`` of round k's policy: the run's init for round 1, else round k-1's ddpo."""
  if k == 1:
    return dict(config.init)
  return dict(config.init, params="checkpoint",
              checkpoint_dir=str(round_dir(root, k - 1) / "ddpo"), checkpoint_step=-1)


def step_config(config: Any, stage: str, init: dict[str, Any]) -> Any:
  """The config of one step: the iterate config with `stage` and `init` (the model's
  architecture follows the checkpoint as in every stage)."""
  out = copy.deepcopy(config)
  out.stage = stage
  out.init.update(init)
  return out


def preference_data(cfg: Any, directory: pathlib.Path) -> None:
  """Points `cfg`'s data at the preference pairs of the round in `directory`."""
  cfg.data.update(dataset="jsonl_preference", source_dir=str(directory / "export" / "preference"),
                  data_dir=str(directory / "tfds"))


def validate(config: Any) -> None:
  """Checks the ``iterate`` section and, through the stages' own validation, every step
  of a round (as round 1 runs them)."""
  it, problems = config.iterate, []
  if it.rounds < 1:
    problems.append(f"iterate.rounds={it.rounds} must be >= 1")
  if it.labeler_params not in ("", "hf", "checkpoint"):
    problems.append(f"iterate.labeler_params={it.labeler_params!r}; expected '' (the policy "
                    "labels itself), 'hf' or 'checkpoint'")
  if problems:
    raise ValueError("invalid iterate config:\n  - " + "\n  - ".join(problems))
  policy = dict(config.init)
  for stage in ("sample", "label", "precompute_ref", "ddpo"):
    cfg = step_config(config, stage, policy)
    cfg.sample.store = cfg.label.store = "<round>/annotations.sqlite"
    if stage in ("precompute_ref", "ddpo"):
      preference_data(cfg, pathlib.Path("<round>"))
    try:
      config_validation.validate_config(cfg)
    except ValueError as e:
      raise ValueError(f"iterate step {stage!r}: {e}") from e


def export_once(directory: pathlib.Path, store_path: pathlib.Path,
                ranking_pairs: Optional[pathlib.Path],
                sources: Sequence[str] = annotate_export.SOURCES) -> dict[str, Any]:
  """The export of `store_path` (with `ranking_pairs`, a label run's ranking_pairs.jsonl,
  and only `sources`' pairs) into ``directory/export``, written once: a resumed round
  keeps it (its dataset was built from these files; rewriting them would make it stale).
  Written to a scratch folder and renamed, so a kill mid-export leaves no half export
  behind. Returns its report."""
  out = directory / "export"
  report = out / annotate_export.REPORT
  if report.is_file():
    return json.loads(report.read_text())
  scratch = directory / "export.partial"
  shutil.rmtree(scratch, ignore_errors=True)
  store = store_lib.AnnotationStore(store_path)
  try:
    result = annotate_export.export(store, store.image_root, scratch,
                                    ranking_pairs=ranking_pairs, sources=sources)
  finally:
    store.close()
  scratch.rename(out)
  return result


def _untimed(step: str, fn: Callable[[], Any]) -> Any:
  del step
  return fn()


def train_on_export(config: Any, policy: dict[str, Any], directory: pathlib.Path,
                    timed: Callable[[str, Callable[[], Any]], Any] = _untimed
                    ) -> tuple[Any, Any]:
  """The policy's log-probs of ``directory/export``'s pairs (``directory/reference``: the
  policy is the reference), then DDPO from the policy on them (``directory/ddpo``), each
  step run as ``timed(step, fn)``; returns the trained params and the ddpo config."""
  reference = step_config(config, "precompute_ref", policy)
  preference_data(reference, directory)
  timed("reference", lambda: runner.run(reference, str(directory / "reference")))
  ddpo = step_config(config, "ddpo", policy)
  preference_data(ddpo, directory)
  ddpo.data.use_ref_cache = True
  return timed("ddpo", lambda: runner.run(ddpo, str(directory / "ddpo"))), ddpo


def run_round(config: Any, root: pathlib.Path, k: int,
              evaluate: Optional[Callable[[int, Any, Any], dict[str, Any]]] = None
              ) -> dict[str, Any] | None:
  """Runs round k (module docstring); returns its report row, or None when the run
  stops for review.

  Args:
    config: the iterate config.
    root: the iteration's workdir.
    k: the round, from 1.
    evaluate: called as ``evaluate(k, params, ddpo_config)`` with the round's new
      policy instead of ``hallucination_eval`` (the miniature scores its CHAIR this
      way); its metrics go to the row's "eval". None: ``iterate.evaluate`` decides.

  The row's "seconds" holds each step's wall time in this run (a resumed step counts
  only what it did now).
  """
  it, directory = config.iterate, round_dir(root, k)
  directory.mkdir(parents=True, exist_ok=True)
  policy = policy_init(config, root, k)
  store_path = directory / "annotations.sqlite"
  row: dict[str, Any] = {"round": k, "policy": policy.get("checkpoint_dir")
                         or policy.get("hf_checkpoint") or policy["params"]}

  seconds = row["seconds"] = {}

  def timed(step: str, fn: Callable[[], Any]) -> Any:
    start = time.monotonic()
    result = fn()
    seconds[step] = round(time.monotonic() - start, 2)
    return result

  sample = step_config(config, "sample", policy)
  sample.sample.update(store=str(store_path), seed=int(config.sample.seed) + k)
  row["sample"] = timed("sample", lambda: runner.run(sample, str(directory / "sample")))

  labeler = dict(policy)
  if it.labeler_params:
    labeler.update(params=it.labeler_params, hf_checkpoint=it.labeler_hf_checkpoint,
                   checkpoint_dir=it.labeler_checkpoint_dir, checkpoint_step=-1)
  label = step_config(config, "label", labeler)
  label.label.store = str(store_path)
  row["label"] = timed("label", lambda: runner.run(label, str(directory / "label")))

  mark = directory / REVIEW_MARK
  if it.stop_after_label and not mark.exists():
    mark.write_text("stopped after label for review; re-run to continue\n")
    logging.info("iterate: round %d stopped for review of %s (python -m rlhfv_jax.annotate "
                 "--store %s); re-run to continue", k, store_path, store_path)
    return None

  pairs = directory / "label" / label_stage.PAIRS_FILE if it.ranking_pairs else None
  row["export"] = timed("export", lambda: export_once(directory, store_path, pairs))
  if not row["export"]["pairs"]:
    raise ValueError(f"round {k}: the export of {store_path} holds no preference pair (no "
                     "answer was corrected and no ranking pair formed: "
                     f"{json.dumps(row['label'], sort_keys=True)}); nothing to train on")

  params, ddpo = train_on_export(config, policy, directory, timed)
  if evaluate is not None:
    row["eval"] = timed("eval", lambda: evaluate(k, params, ddpo))
  elif it.evaluate:
    benchmarks = step_config(config, "hallucination_eval", policy_init(config, root, k + 1))
    row["eval"] = timed("eval", lambda: runner.run(benchmarks, str(directory / "eval")))
  return row


def run(config: Any, workdir: str) -> dict[str, Any]:
  """The stage (module docstring). Returns the report."""
  root = pathlib.Path(workdir)
  rows = []
  for k in range(1, config.iterate.rounds + 1):
    row = run_round(config, root, k)
    if row is None:
      break
    rows.append(row)
    write_report(root, rows)
  return {"rounds": rows}


def write_report(root: pathlib.Path, rows: list[dict[str, Any]]) -> None:
  """iterate_report.json (every round's numbers) and iterate_report.md (a table)."""
  (root / f"{REPORT}.json").write_text(json.dumps(rows, indent=2, sort_keys=True, default=str))
  lines = ["| round | answers | claims | failed | corrected | no hallucination | "
           "ranking pairs | preference records | benchmarks |", "|" + "---|" * 9]
  for row in rows:
    label, export = row["label"], row["export"]
    lines.append(
        f"| {row['round']} | {row['sample'].get('answered', 0)} | {label.get('claims', 0)} | "
        f"{label.get('failed_claims', 0)} | {label.get('corrected', 0)} | "
        f"{label.get('no_hallucination', 0)} | {label.get('ranking_pairs', 0)} | "
        f"{export['pairs']} | {headline(row.get('eval', {}))} |")
  lines += ["", time_shares(rows)]
  (root / f"{REPORT}.md").write_text("# Iterated AI-feedback DDPO\n\n" + "\n".join(lines) + "\n")
  plot(root / f"{REPORT}.png", rows)


def headline(metrics: dict[str, Any], limit: int = 8) -> str:
  """The numbers of an evaluation, flattened ("pope.f1 0.667, objhal.chair_s 0.120"),
  leaving out its settings, file hashes and per-split detail (all in the .json)."""
  out: list[str] = []

  def walk(prefix: str, value: Any) -> None:
    if isinstance(value, dict):
      for key, inner in value.items():
        if key not in ("settings", "files", "splits", "per_split"):
          walk(f"{prefix}.{key}" if prefix else str(key), inner)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out.append(f"{prefix.removeprefix('benchmarks.')} {value:.3g}")

  walk("", metrics)
  return ", ".join(out[:limit]) + (f", +{len(out) - limit} more" if len(out) > limit else "")


def time_shares(rows: list[dict[str, Any]]) -> str:
  """One line: each step's share of the rounds' wall time (as far as this run measured:
  a step resumed finished costs ~0)."""
  totals = dict.fromkeys(STEPS, 0.0)
  for row in rows:
    for step, seconds in row.get("seconds", {}).items():
      totals[step] = totals.get(step, 0.0) + seconds
  totals = {step: seconds for step, seconds in totals.items() if seconds}
  whole = sum(totals.values())
  if not whole:
    return "Time per step: not measured."
  return (f"Time per step over {len(rows)} round(s), {whole:.0f} s in all: " + ", ".join(
      f"{step} {seconds / whole:.0%}" for step, seconds in totals.items()) + ".")


def plot(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
  """Per round: the share of the policy's claims the labeler rejects (how much it still
  hallucinates, by the labeler's judgement) and the preference records trained on."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after choosing the headless backend

  rounds = [row["round"] for row in rows]
  failed = [row["label"].get("failed_claims", 0) / max(row["label"].get("claims", 0), 1)
            for row in rows]
  fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
  left.plot(rounds, failed, marker="o")
  left.set(xlabel="round", ylabel="share", title="claims the labeler rejects")
  right.bar(rounds, [row["export"]["pairs"] for row in rows])
  right.set(xlabel="round", title="preference records")
  for ax in (left, right):
    ax.set_xticks(rounds)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
