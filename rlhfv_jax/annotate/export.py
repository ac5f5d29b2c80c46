"""Annotations → training data: preference pairs in both formats the `ddpo` stage reads.

`export(store, image_root, out)` writes, under ``out``:

* ``preference/train.jsonl`` (+ ``preference/images/``): one preference record per
  ``corrected`` annotation in the project's JSONL format (`data.writers.write_jsonl`),
  with the annotated character spans as its ``segments`` (unless ``with_spans=False``:
  then training finds them by the paper's token diff): rejected = the model's answer,
  chosen = the correction. Record id ``<item id>@<annotator>`` (an item annotated by two
  people, or by a person and an AI labeler, gives two pairs; nothing is dropped). With
  ``ranking_pairs``, also one record per line of that file (below). Load with
  ``data.dataset=jsonl_preference`` and ``data.source_dir=<out>/preference``.
* ``rlhfv_parquet/train-00000-of-00001.parquet``: the same records in the RLHF-V
  dataset's parquet layout (``data.dataset=rlhfv_parquet``,
  ``data.source_dir=<out>/rlhfv_parquet``).
* ``no_hallucination/train.jsonl``: answers an annotator found free of hallucination.
  They make no pair; they are SFT records (``data.dataset=jsonl_sft``).
* ``unclear.jsonl``: the items an annotator skipped as unclear (item id, annotator, when).
* ``export_report.json``: counts (``pairs`` counts every preference record written,
  ``pairs_by_source`` splits them; with ``sources`` only those sources' pairs are
  written, the others counted in ``pairs_left_out_by_source``), items not annotated yet, the annotations left out
  (``skipped``: item, annotator, image, problem), and annotator agreement where
  an item has two or more annotations by people (other than "unclear"): the share of
  annotator pairs whose corrected spans in the answer are identical ("no hallucination" =
  no span), and their mean character overlap (Jaccard of the marked characters; 1 when
  both mark nothing). Its ``ai_vs_human`` part does the same between AI labelers and
  people (`agreement`).

Every record's ``origin`` says where it came from: ``source`` is "human" or "ai" (an
annotator named ``ai:...``, `store.is_ai`) with ``annotator`` who, and "ai_ranking" for
the ranking pairs. (The parquet files keep RLHF-V's origin columns only.)

Ranking pairs (RLAIF-V's, from an AI labeler that scored several answers to one prompt)
come as JSON lines ``{"chosen_item_id", "rejected_item_id", "chosen_score",
"rejected_score", "labeler"}`` naming two items of the store with the same image and
prompt, the chosen one scoring higher. Each becomes a preference record without spans
(they are not fine-grained): chosen = the chosen item's answer, rejected = the rejected
item's, record id ``<chosen id>><rejected id>@<labeler>``, ``origin`` with ``item_id`` (the
chosen item), ``rejected_item_id``, both scores and ``annotator`` = the labeler. A line that
is not such a pair is an error naming the file and line (`read_ranking_pairs`).

Every image is read from under the image root. An annotation whose image cannot be read
(missing, or resolving outside the root) is left out and listed, never silently: in the
report's ``skipped`` and in ``skipped_export.jsonl`` (the data layer's error policy,
`records.ErrorLog`), so that one bad item never stops the export. With
``error_policy="raise"`` the first one is an error naming it. Messages name images by
their path relative to the root.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
from typing import Any, Callable, Optional, Sequence

from rlhfv_jax import jsonl
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data import records as records_lib
from rlhfv_jax.data import writers

REPORT = "export_report.json"
SOURCES = ("human", "ai", "ai_ranking")
RANKING_KEYS = ("chosen_item_id", "rejected_item_id", "chosen_score", "rejected_score",
                "labeler")


@dataclasses.dataclass(frozen=True)
class RankingPair:
  """One line of a ranking-pairs file (module docstring), its items looked up."""

  line: int
  chosen: store_lib.Item
  rejected: store_lib.Item
  chosen_score: float
  rejected_score: float
  labeler: str

  @property
  def record_id(self) -> str:
    return f"{self.chosen.id}>{self.rejected.id}@{self.labeler}"


def image_file(image_root: str | pathlib.Path, image: str) -> pathlib.Path:
  """The file of an item's image, resolved under `image_root` (symlinks included).

  Raises:
    store_lib.StoreError: a path that is absolute, climbs out with "..", or resolves
      outside the root.
  """
  root = pathlib.Path(image_root).resolve()
  path = (root / store_lib.check_image_path("?", image)).resolve()
  if not path.is_relative_to(root):
    # The root stays out of the message: the server shows it to annotators.
    raise store_lib.StoreError(f"image {image!r} resolves outside the image root")
  return path


def _image_bytes(image_root: pathlib.Path, item: store_lib.Item) -> bytes:
  """The item's image; a StoreError naming it by its relative path when unreadable."""
  path = image_file(image_root, item.image)
  try:
    return path.read_bytes()
  except FileNotFoundError:
    raise store_lib.StoreError(f"image {item.image!r} not found") from None
  except OSError as e:
    raise store_lib.StoreError(f"cannot read image {item.image!r} ({e.strerror})") from None


def source(annotator: str) -> str:
  """The ``source`` of an annotator's records: "ai" for an AI labeler, else "human"."""
  return "ai" if store_lib.is_ai(annotator) else "human"


def _origin(item: store_lib.Item, source_name: str, annotator: str, **more: str
            ) -> dict[str, str]:
  """Provenance kept with each record (RLHF-V's origin columns + who/when/how)."""
  origin = {"item_id": item.id, "source": source_name, "annotator": annotator, **more,
            "image_path": item.image, "ds_name": "rlhfv_jax.annotate",
            "origin_split": "train"}
  origin.update({f"sample_{k}": str(v) for k, v in sorted(item.meta.items())})
  return origin


def _ranking_problem(row: dict[str, Any], items: dict[str, store_lib.Item]
                     ) -> Optional[str]:
  """What is wrong with one line of a ranking-pairs file, or None."""
  missing = [k for k in RANKING_KEYS if k not in row]
  if missing:
    return f"missing {missing}"
  for key in ("chosen_item_id", "rejected_item_id", "labeler"):
    if not isinstance(row[key], str) or not row[key].strip():
      return f"{key} must be a non-empty string"
    if key != "labeler" and row[key] not in items:
      return f"{key}: no item {row[key]!r} in the store"
  for key in ("chosen_score", "rejected_score"):
    if (isinstance(row[key], bool) or not isinstance(row[key], (int, float))
        or not math.isfinite(row[key])):
      return f"{key} must be a finite number"
  chosen, rejected = items[row["chosen_item_id"]], items[row["rejected_item_id"]]
  if chosen.id == rejected.id:
    return f"chosen and rejected are the same item {chosen.id!r}"
  if (chosen.image, chosen.prompt) != (rejected.image, rejected.prompt):
    return (f"items {chosen.id!r} and {rejected.id!r} do not share their image and "
            "prompt: a ranking pair compares answers to one question")
  if not row["chosen_score"] > row["rejected_score"]:
    return (f"the chosen answer's score {row['chosen_score']} is not above the rejected "
            f"one's {row['rejected_score']}")
  return None


def read_ranking_pairs(path: str | pathlib.Path, items: dict[str, store_lib.Item]
                       ) -> list[RankingPair]:
  """The ranking pairs of a JSON lines file (module docstring), checked against `items`.

  Raises:
    jsonl.JsonlError: a line that is not JSON, misses a key, names an unknown item, pairs
      answers to different images or prompts, has scores that do not rank the chosen
      answer first, or repeats an earlier pair; the message names the file and line.
    OSError: the file cannot be read.
  """
  pairs, seen = [], {}
  for number, row in jsonl.read_objects(path):
    problem = _ranking_problem(row, items)
    if problem is not None:
      raise jsonl.JsonlError(path, number, problem)
    pair = RankingPair(number, items[row["chosen_item_id"]], items[row["rejected_item_id"]],
                       row["chosen_score"], row["rejected_score"], row["labeler"])
    if pair.record_id in seen:
      raise jsonl.JsonlError(path, number, f"the same pair as line {seen[pair.record_id]}")
    seen[pair.record_id] = number
    pairs.append(pair)
  return pairs


def _marked_characters(annotation: store_lib.Annotation) -> set[int]:
  return {c for start, end in annotation.rejected_spans for c in range(start, end)}


def _share(hits: list[bool]) -> Optional[float]:
  return sum(hits) / len(hits) if hits else None


def _span_agreement(pairs: list[tuple[store_lib.Annotation, store_lib.Annotation]]
                    ) -> dict[str, Optional[float]]:
  """The share of `pairs` with identical spans in the answer and their mean character
  overlap (Jaccard of the marked characters; 1 when both mark nothing)."""
  overlaps = []
  for a, b in pairs:
    marked_a, marked_b = _marked_characters(a), _marked_characters(b)
    union = marked_a | marked_b
    overlaps.append(len(marked_a & marked_b) / len(union) if union else 1.0)
  return {"identical_spans_share": _share([set(a.rejected_spans) == set(b.rejected_spans)
                                           for a, b in pairs]),
          "mean_character_overlap": _share(overlaps)}


def agreement(annotations: list[store_lib.Annotation]) -> dict[str, Any]:
  """Agreement over the annotations that are not "unclear" (module docstring).

  Between people: every two people's annotations of one item. ``ai_vs_human``: every
  (AI labeler, person) pair of annotations of one item; ``same_verdict_share`` over all
  of them, the spans' agreement over those where both corrected the answer.
  """
  by_item: dict[str, list[store_lib.Annotation]] = {}
  for a in annotations:
    if a.verdict != "unclear":
      by_item.setdefault(a.item_id, []).append(a)
  people = [[a for a in group if not store_lib.is_ai(a.annotator)]
            for group in by_item.values()]
  pairs = [pair for group in people for pair in itertools.combinations(group, 2)]
  mixed = [(ai, person) for group in by_item.values() for ai in group
           if store_lib.is_ai(ai.annotator)
           for person in group if not store_lib.is_ai(person.annotator)]
  corrected = [(a, b) for a, b in mixed if a.verdict == b.verdict == "corrected"]
  return {"items_annotated_twice_or_more": sum(len(g) > 1 for g in people),
          "annotator_pairs": len(pairs), **_span_agreement(pairs),
          "ai_vs_human": {"items": len({a.item_id for a, _ in mixed}), "pairs": len(mixed),
                          "same_verdict_share": _share([a.verdict == b.verdict
                                                        for a, b in mixed]),
                          "corrected_pairs": len(corrected), **_span_agreement(corrected)}}


def export(store: store_lib.AnnotationStore, image_root: str | pathlib.Path,
           out: str | pathlib.Path, *, with_spans: bool = True,
           error_policy: str = "skip",
           ranking_pairs: Optional[str | pathlib.Path] = None,
           sources: Sequence[str] = SOURCES) -> dict[str, Any]:
  """Writes the files of the module docstring; returns the report.

  Args:
    store: the annotations.
    image_root: the folder the items' image paths are relative to.
    out: the output folder.
    with_spans: keep the annotated character spans in the pairs (default). Without
      them the training pipeline finds the corrected segments by the paper's token
      diff of the two answers (`rlhfv_jax.segments`).
    error_policy: "skip" (leave out and list an annotation whose record cannot be made,
      e.g. its image is missing; module docstring) or "raise".
    ranking_pairs: a JSON lines file of ranking pairs among the store's items (module
      docstring), each exported as one more preference record; None for none.
    sources: the sources (`SOURCES`) whose preference pairs are written, e.g.
      ("ai_ranking",) to train on an AI labeler's ranking pairs alone; the report's
      ``pairs_left_out_by_source`` counts the others (no pair is dropped unsaid).

  Raises:
    records.RecordError: with "raise", the first such annotation or ranking pair.
    jsonl.JsonlError: a bad line of `ranking_pairs` (`read_ranking_pairs`), before
      anything is written.
  """
  unknown = sorted(set(sources) - set(SOURCES))
  if unknown or not sources:
    raise ValueError(f"export sources {tuple(sources)}: expected some of {SOURCES}")
  out, image_root = pathlib.Path(out), pathlib.Path(image_root)
  items = {item.id: item for item in store.items()}
  ranked = [] if ranking_pairs is None else read_ranking_pairs(ranking_pairs, items)
  records_lib.skipped_path(out, "export").unlink(missing_ok=True)  # an earlier run's
  errors = records_lib.ErrorLog(error_policy, out, "export", process_index=0,
                                process_count=1)
  annotations = store.annotations()
  pairs, clean, unclear, skipped = [], [], [], []

  def made(record_id: str, location: str, item: store_lib.Item, annotator: str,
           make: Callable[[bytes], Any], into: list) -> None:
    """Appends make(image bytes) to `into`; a record that cannot be made is left out
    and listed (the error policy)."""
    try:
      into.append(make(_image_bytes(image_root, item)))
    except (store_lib.StoreError, records_lib.RecordError) as e:
      problem = e.problem if isinstance(e, records_lib.RecordError) else str(e)
      errors.handle(records_lib.RecordError(record_id, problem, location))
      skipped.append({"item_id": item.id, "annotator": annotator, "image": item.image,
                      "problem": problem})

  for a in annotations:
    item = items[a.item_id]
    origin = _origin(item, source(a.annotator), a.annotator,
                     annotated_at=f"{a.updated_at:.3f}", revision=str(a.revision))
    record_id = f"{item.id}@{a.annotator}"
    location = f"annotation of {item.id!r} by {a.annotator!r}"
    if a.verdict == "corrected":
      segments = ({"segments": {"chosen": [list(s) for s in a.chosen_spans],
                                "rejected": [list(s) for s in a.rejected_spans]}}
                  if with_spans else {})
      made(record_id, location, item, a.annotator,
           lambda image: records_lib.make_preference_record(
               {"id": record_id, "image": image, "question": item.prompt,
                "chosen": a.corrected, "rejected": a.original, "origin": origin,
                **segments}, location), pairs)
    elif a.verdict == "no_hallucination":
      made(record_id, location, item, a.annotator,
           lambda image: records_lib.make_sft_record(
               {"id": record_id, "image": image, "question": item.prompt,
                "answer": a.original, "origin": origin}, location), clean)
    else:
      unclear.append({"item_id": item.id, "annotator": a.annotator,
                      "annotated_at": a.updated_at})
  for pair in ranked:
    origin = _origin(pair.chosen, "ai_ranking", pair.labeler,
                     rejected_item_id=pair.rejected.id, chosen_score=str(pair.chosen_score),
                     rejected_score=str(pair.rejected_score))
    location = jsonl.location(ranking_pairs, pair.line)
    made(pair.record_id, location, pair.chosen, pair.labeler,
         lambda image: records_lib.make_preference_record(
             {"id": pair.record_id, "image": image, "question": pair.chosen.prompt,
              "chosen": pair.chosen.answer, "rejected": pair.rejected.answer,
              "origin": origin}, location), pairs)
  left_out = {s: sum(p.origin["source"] == s for p in pairs) for s in SOURCES
              if s not in sources}
  pairs = [p for p in pairs if p.origin["source"] in sources]
  writers.write_jsonl(out / "preference", pairs)
  writers.write_rlhfv_parquet(out / "rlhfv_parquet", pairs)
  writers.write_jsonl(out / "no_hallucination", clean)
  (out / "unclear.jsonl").write_text("".join(json.dumps(u, sort_keys=True) + "\n"
                                             for u in unclear))
  annotated = {a.item_id for a in annotations}
  report = {"items": len(items), "annotations": len(annotations), "pairs": len(pairs),
            "pairs_by_source": {s: sum(p.origin["source"] == s for p in pairs)
                                for s in SOURCES},
            "pairs_left_out_by_source": left_out,
            "no_hallucination": len(clean), "unclear": len(unclear),
            "items_not_annotated": len(set(items) - annotated),
            "annotators": sorted({a.annotator for a in annotations}), "skipped": skipped,
            "agreement": agreement(annotations)}
  (out / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
  return report
