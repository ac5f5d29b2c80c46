"""The `label` stage: an AI labeler over the annotation store's answers (RLAIF-V's
divide-and-conquer, with RLHF-V's fine-grained corrections as a product).

  python -m rlhfv_jax.main --config configs/llava15_feedback.py:label --workdir DIR \\
      --config.label.store=/runs/feedback_round1/annotations.sqlite \\
      --config.init.params=checkpoint --config.init.checkpoint_dir=/runs/llava15_7b_sft

What it does (``config.label``):
  divide    each answer's claims (`rlhfv_jax.feedback.claims`): object presence, absence
            (negations) and counts over the Object HalBench vocabulary (or the classes
            of a synonyms file of your own, ``vocabulary``), or an external tool's
            claims (``claims_file``), each with its span and a yes/no question
  conquer   the labeler (the run's init: any checkpoint the project loads; the policy
            itself is self-feedback) reads the image and each question + ``question_suffix``
            ("Please answer yes or no."); one forward gives P(yes) and P(no) from the
            next-token distribution, each summed over its casings (``yes_words``,
            ``no_words``; `Sampler.choice_probabilities`). A claim fails when the more
            likely answer is not the one it expects.
  products  (a) a fine-grained correction of every answer with failed claims (the
            clause or sentence carrying each failed claim deleted,
            `feedback.corrections.delete_failed`), stored as an annotation by
            ``ai:<labeler>`` (verdict "corrected"; answers with no failed claim:
            "no_hallucination"), so the store's export turns it into DDPO data whose
            corrected segments are exactly what the labeler rejected; (b) RLAIF-V ranking
            pairs among the answers to the same (image, prompt), scored −(failed claims)
            (`feedback.corrections.ranking_pairs`) in ``ranking_pairs.jsonl``, which the
            store's export takes with ``--ranking_pairs``.

The verdicts are computed like every answering stage's answers (`answering`): each
process scores its share of the questions, batched over its devices, appending one line
per question (``label_answers*.jsonl``), so a killed run continues where it stopped;
process 0 then writes ``verdicts.jsonl`` (every answer's claims with P(yes), P(no) and
whether each failed), the products and ``label_summary.json``. Re-running is safe: the
store replaces an annotator's earlier annotation of an item.

Bad input: an answer with no claim, an unreadable image, a claims-file line naming an
unknown item or a span outside its answer: an error naming it, or with
``error_policy="skip"`` a counted skip (``skipped_label.jsonl``); a labeler whose
tokenizer cannot answer yes/no in one token is refused before anything runs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
from typing import Any, Sequence

import jax
from absl import logging
from jax.experimental import multihost_utils

from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data import factory
from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax.data.records import ErrorLog, RecordError
from rlhfv_jax.evals import objhal
from rlhfv_jax.feedback import claims as claims_lib
from rlhfv_jax.feedback import corrections
from rlhfv_jax.stages import answering

ANSWERS = "label"  # <workdir>/label_answers.jsonl: one line per question
VERDICTS_FILE = "verdicts.jsonl"
PAIRS_FILE = "ranking_pairs.jsonl"
SUMMARY_FILE = "label_summary.json"


@dataclasses.dataclass(frozen=True)
class Question:
  """One claim of one stored answer, asked of the labeler."""

  id: str  # "<item id>|<claim number>"
  item_id: str
  claim: int
  prompt: str
  image: str  # relative to the store's image root
  root: pathlib.Path

  def image_bytes(self) -> bytes:
    return answering.store_image(self.root, self.image, self.item_id)


def labeler_name(config: Any) -> str:
  """The store annotator of the labeler's annotations: "ai:<label.labeler>", or
  "ai:<the init checkpoint's folder name>"."""
  name = config.label.labeler
  if not name:
    init = config.init
    source = {"hf": init.hf_checkpoint, "checkpoint": init.checkpoint_dir}.get(init.params, "")
    name = pathlib.Path(source).name if source else f"random-{config.seed}"
  return store_lib.check_annotator(f"ai:{name}"[:64])


def item_claims(lab: Any, items: Sequence[store_lib.Item], errors: ErrorLog
                ) -> dict[str, list[claims_lib.Claim]]:
  """Every item's claims (rule based, or from ``label.claims_file``); an item without a
  claim is an error or, per the policy, a counted skip."""
  texts = {item.id: item.answer for item in items}
  if lab.claims_file:
    found = claims_lib.read_claims_file(lab.claims_file, texts, on_error=errors.handle_input_error)
  else:
    vocabulary = objhal.Vocabulary(objhal.read_synonyms(lab.vocabulary)
                                   if lab.vocabulary else objhal.COCO_SYNONYMS)
    extractor = claims_lib.RuleClaimExtractor(vocabulary)
    found = {item.id: extractor.extract(item.answer) for item in items}
  out = {}
  for item in items:
    if found.get(item.id):
      out[item.id] = found[item.id]
    elif item.id in found or not lab.claims_file:
      vocabulary = lab.vocabulary or "the Object HalBench vocabulary"
      errors.handle(RecordError(item.id, "the answer has no claim to check (no object "
                                f"mention of {vocabulary})" if not lab.claims_file else
                                f"{lab.claims_file} lists no claim for it"))
  return out


def failed(claim: claims_lib.Claim, p_yes: float, p_no: float) -> bool:
  """Whether the labeler's more likely answer is not the one the claim expects."""
  return ("yes" if p_yes >= p_no else "no") != claim.expected


def run(config: Any, workdir: str) -> dict[str, Any]:
  """The stage (module docstring). Returns the summary (on every process)."""
  lab, root = config.label, pathlib.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  if not pathlib.Path(lab.store).is_file():
    raise ValueError(f"label.store={lab.store!r} is not an annotation store file (the "
                     "`sample` stage writes <workdir>/annotations.sqlite)")
  pid, count = jax.process_index(), jax.process_count()
  store = store_lib.AnnotationStore(lab.store)
  try:  # read once; the store is written again only by process 0, at the end
    items, image_root = store.items(), store.image_root
  finally:
    store.close()
  if not image_root:
    raise ValueError(f"{lab.store} has no image root: set it with "
                     "`python -m rlhfv_jax.annotate --store ... --image_root DIR`")
  errors = ErrorLog(lab.error_policy, root, name="label")
  claims = item_claims(lab, items, errors)
  questions = [Question(f"{item.id}|{k}", item.id, k, claim.question + lab.question_suffix,
                        item.image, pathlib.Path(image_root))
               for item in items if item.id in claims
               for k, claim in enumerate(claims[item.id])]
  # The labeler must answer yes/no in one token: checked before its weights are read.
  tokenizer = factory.make_tokenizer(config)
  choices = {"yes": tokenizer_lib.choice_token_ids(tokenizer, lab.yes_words),
             "no": tokenizer_lib.choice_token_ids(tokenizer, lab.no_words)}
  sample, params = answering.local_sampler(config, lab.batch_size)

  def score(batch: Sequence[Question], images: list[bytes], first: int) -> list[dict]:
    del first  # a forward, no sampling
    p = sample.choice_probabilities(params, images, [q.prompt for q in batch],
                                    choices=choices, batch_size=lab.batch_size,
                                    prompt_multiple=lab.prompt_multiple)
    return [{"id": q.id, "item_id": q.item_id, "claim": q.claim,
             "p_yes": float(p["yes"][i]), "p_no": float(p["no"][i])}
            for i, q in enumerate(batch)]

  answering.resumable_batches("label", questions[pid::count],
                              answering.answers_path(root, ANSWERS, pid, count), score,
                              batch_size=lab.batch_size, errors=errors)
  if count > 1:
    multihost_utils.sync_global_devices("label answered")
  summary: dict[str, Any] = {}
  if pid == 0:
    verdicts = answering.read_all_answers(root, ANSWERS, count)
    store = store_lib.AnnotationStore(lab.store)
    try:
      summary = write_products(config, root, store, items, claims, verdicts)
    finally:
      store.close()
    summary["skipped"] = errors.num_skipped
    (root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    logging.info("label: %s", json.dumps(summary, sort_keys=True))
  return summary


def write_products(config: Any, root: pathlib.Path, store: store_lib.AnnotationStore,
                   items: Sequence[store_lib.Item], claims: dict[str, list[claims_lib.Claim]],
                   verdicts: dict[str, dict]) -> dict[str, Any]:
  """verdicts.jsonl, the labeler's annotations in the store and ranking_pairs.jsonl from
  the per-question verdicts; returns the counts."""
  lab, annotator = config.label, labeler_name(config)
  counts = collections.Counter()
  scored: dict[tuple[str, str], list[corrections.ScoredAnswer]] = collections.defaultdict(list)
  with (root / VERDICTS_FILE).open("w", encoding="utf-8") as f:
    for item in items:
      asked = claims.get(item.id, [])
      answers = [verdicts.get(f"{item.id}|{k}") for k in range(len(asked))]
      if not asked or any(a is None for a in answers):
        counts["items_unlabelled"] += 1  # no claim, or an image skipped: listed skips
        continue
      rows = [dict(dataclasses.asdict(c), p_yes=a["p_yes"], p_no=a["p_no"],
                   failed=failed(c, a["p_yes"], a["p_no"])) for c, a in zip(asked, answers)]
      bad = [c for c, row in zip(asked, rows) if row["failed"]]
      f.write(json.dumps({"item_id": item.id, "score": -len(bad), "claims": rows},
                         sort_keys=True, ensure_ascii=False) + "\n")
      counts["items"] += 1
      counts["claims"] += len(asked)
      counts["failed_claims"] += len(bad)
      scored[(item.image, item.prompt)].append(
          corrections.ScoredAnswer(item.id, item.answer, len(bad), len(asked)))
      if not bad:
        store.propose(annotator, item.id, "no_hallucination", None)
        counts["no_hallucination"] += 1
        continue
      fixed = corrections.delete_failed(item.answer, [c.span for c in bad])
      if not fixed.text.strip():
        counts["emptied"] += 1  # every sentence failed: no correction to learn from
        continue
      store.propose(annotator, item.id, "corrected", fixed.text)
      counts["corrected"] += 1
  pairs = [pair for answers in scored.values()
           for pair in corrections.ranking_pairs(answers, min_gap=lab.min_gap,
                                                 max_pairs=lab.max_pairs,
                                                 max_length_ratio=lab.max_length_ratio)]
  with (root / PAIRS_FILE).open("w", encoding="utf-8") as f:
    for pair in pairs:
      f.write(json.dumps({"chosen_item_id": pair.chosen_id, "rejected_item_id": pair.rejected_id,
                          "chosen_score": pair.chosen_score,
                          "rejected_score": pair.rejected_score, "labeler": annotator},
                         sort_keys=True) + "\n")
  return dict(counts, ranking_pairs=len(pairs), labeler=annotator, store=str(lab.store))
