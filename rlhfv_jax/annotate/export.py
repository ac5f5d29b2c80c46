"""Annotations → training data: preference pairs in both formats the `ddpo` stage reads.

`export(store, image_root, out)` writes, under ``out``:

* ``preference/train.jsonl`` (+ ``preference/images/``): one preference record per
  ``corrected`` annotation in the project's JSONL format (`data.writers.write_jsonl`),
  with the annotated character spans as its ``segments`` (unless ``with_spans=False``:
  then training finds them by the paper's token diff): rejected = the model's answer,
  chosen = the correction. Record id ``<item id>@<annotator>`` (an item annotated by two
  people gives two pairs; nothing is dropped). Load with ``data.dataset=jsonl_preference``
  and ``data.source_dir=<out>/preference``.
* ``rlhfv_parquet/train-00000-of-00001.parquet``: the same records in the RLHF-V
  dataset's parquet layout (``data.dataset=rlhfv_parquet``,
  ``data.source_dir=<out>/rlhfv_parquet``).
* ``no_hallucination/train.jsonl``: answers an annotator found free of hallucination.
  They make no pair; they are SFT records (``data.dataset=jsonl_sft``).
* ``unclear.jsonl``: the items an annotator skipped as unclear (item id, annotator, when).
* ``export_report.json``: counts, items not annotated yet, the annotations left out
  (``skipped``: item, annotator, image, problem), and annotator agreement where
  an item has two or more annotations (other than "unclear"): the share of annotator
  pairs whose corrected spans in the answer are identical ("no hallucination" = no span),
  and their mean character overlap (Jaccard of the marked characters; 1 when both mark
  nothing).

Every image is read from under the image root. An annotation whose image cannot be read
(missing, or resolving outside the root) is left out and listed, never silently: in the
report's ``skipped`` and in ``skipped_export.jsonl`` (the data layer's error policy,
`records.ErrorLog`), so that one bad item never stops the export. With
``error_policy="raise"`` the first one is an error naming it. Messages name images by
their path relative to the root.
"""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Any

from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data import records as records_lib
from rlhfv_jax.data import writers

REPORT = "export_report.json"


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


def _origin(item: store_lib.Item, annotation: store_lib.Annotation) -> dict[str, str]:
  """Provenance kept with each record (RLHF-V's origin columns + who/when/how)."""
  origin = {"item_id": item.id, "annotator": annotation.annotator,
            "annotated_at": f"{annotation.updated_at:.3f}",
            "revision": str(annotation.revision), "image_path": item.image,
            "ds_name": "rlhfv_jax.annotate", "origin_split": "train"}
  origin.update({f"sample_{k}": str(v) for k, v in sorted(item.meta.items())})
  return origin


def _marked_characters(annotation: store_lib.Annotation) -> set[int]:
  return {c for start, end in annotation.rejected_spans for c in range(start, end)}


def agreement(annotations: list[store_lib.Annotation]) -> dict[str, Any]:
  """Agreement over items with >= 2 annotations that are not "unclear" (module docstring)."""
  by_item: dict[str, list[store_lib.Annotation]] = {}
  for a in annotations:
    if a.verdict != "unclear":
      by_item.setdefault(a.item_id, []).append(a)
  pairs = [pair for group in by_item.values() if len(group) > 1
           for pair in itertools.combinations(group, 2)]
  identical, overlaps = 0, []
  for a, b in pairs:
    identical += set(a.rejected_spans) == set(b.rejected_spans)
    marked_a, marked_b = _marked_characters(a), _marked_characters(b)
    union = marked_a | marked_b
    overlaps.append(len(marked_a & marked_b) / len(union) if union else 1.0)
  return {"items_annotated_twice_or_more": sum(len(g) > 1 for g in by_item.values()),
          "annotator_pairs": len(pairs),
          "identical_spans_share": identical / len(pairs) if pairs else None,
          "mean_character_overlap": sum(overlaps) / len(overlaps) if overlaps else None}


def export(store: store_lib.AnnotationStore, image_root: str | pathlib.Path,
           out: str | pathlib.Path, *, with_spans: bool = True,
           error_policy: str = "skip") -> dict[str, Any]:
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

  Raises:
    records.RecordError: with "raise", the first such annotation.
  """
  out, image_root = pathlib.Path(out), pathlib.Path(image_root)
  records_lib.skipped_path(out, "export").unlink(missing_ok=True)  # an earlier run's
  errors = records_lib.ErrorLog(error_policy, out, "export", process_index=0,
                                process_count=1)
  items = {item.id: item for item in store.items()}
  annotations = store.annotations()
  pairs, clean, unclear, skipped = [], [], [], []
  for a in annotations:
    item = items[a.item_id]
    origin = _origin(item, a)
    record_id = f"{item.id}@{a.annotator}"
    location = f"annotation of {item.id!r} by {a.annotator!r}"
    try:
      if a.verdict == "corrected":
        pairs.append(records_lib.make_preference_record(
            {"id": record_id, "image": _image_bytes(image_root, item),
             "question": item.prompt, "chosen": a.corrected, "rejected": a.original,
             "origin": origin,
             **({"segments": {"chosen": [list(s) for s in a.chosen_spans],
                              "rejected": [list(s) for s in a.rejected_spans]}}
                if with_spans else {})}, location))
      elif a.verdict == "no_hallucination":
        clean.append(records_lib.make_sft_record(
            {"id": record_id, "image": _image_bytes(image_root, item),
             "question": item.prompt, "answer": a.original, "origin": origin}, location))
      else:
        unclear.append({"item_id": item.id, "annotator": a.annotator,
                        "annotated_at": a.updated_at})
    except (store_lib.StoreError, records_lib.RecordError) as e:
      problem = e.problem if isinstance(e, records_lib.RecordError) else str(e)
      errors.handle(records_lib.RecordError(record_id, problem, location))
      skipped.append({"item_id": item.id, "annotator": a.annotator, "image": item.image,
                      "problem": problem})
  writers.write_jsonl(out / "preference", pairs)
  writers.write_rlhfv_parquet(out / "rlhfv_parquet", pairs)
  writers.write_jsonl(out / "no_hallucination", clean)
  (out / "unclear.jsonl").write_text("".join(json.dumps(u, sort_keys=True) + "\n"
                                             for u in unclear))
  annotated = {a.item_id for a in annotations}
  report = {"items": len(items), "annotations": len(annotations), "pairs": len(pairs),
            "no_hallucination": len(clean), "unclear": len(unclear),
            "items_not_annotated": len(set(items) - annotated),
            "annotators": sorted({a.annotator for a in annotations}), "skipped": skipped,
            "agreement": agreement(annotations)}
  (out / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
  return report
