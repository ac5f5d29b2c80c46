"""Readers of the raw on-disk formats into validated records.

Each reader is a generator of `PreferenceRecord`/`SFTRecord` that routes every invalid
example through an `ErrorLog` (fail fast or skip-and-count) and rejects duplicate ids
(ids key the reference log-prob cache). Layouts:

RLHF-V parquet (`read_rlhfv_parquet`, the public ``openbmb/RLHF-V-Dataset`` layout):
  every ``*.parquet`` under the directory (sorted), one row per example with columns
  ``image`` = struct{bytes, path}, ``text`` = JSON string (or UTF-8 bytes) holding
  ``question``, ``chosen``, ``rejected`` (optionally ``segments``, see `records`), and
  ``idx`` (the record id), ``origin_dataset``, ``origin_split``, ``ds_name``,
  ``image_path`` (kept as origin metadata). An image with null bytes is read from
  ``image.path`` relative to the parquet file's directory.

RLAIF-V parquet (`read_rlaifv_parquet`, the ``openbmb/RLAIF-V-Dataset`` layout): the
  same files and columns, but ``question``, ``chosen`` and ``rejected`` are top-level
  string columns (no ``text`` JSON). Its pairs are two independently sampled answers
  ranked by an AI labeler, not one answer and its correction: see the builder's
  corrected-share report (`tfds_builders`).

JSONL + image folder (`read_jsonl`): ``<dir>/<split>.jsonl``, one JSON object a line:
  preference: ``{"id", "image", "question", "chosen", "rejected"[, "segments"][, "origin"]}``
  sft:        ``{"id", "image", "question", "answer"[, "origin"]}``
  with ``image`` a path relative to ``<dir>``. This is the format the demo's labeler
  writes and the simplest way to bring other feedback data.

VQAv2 (`read_vqav2`, the official release) in ``<dir>``:
  ``v2_OpenEnded_mscoco_<split>2014_questions.json``  {"questions": [{image_id, question, question_id}]}
  ``v2_mscoco_<split>2014_annotations.json``          {"annotations": [{question_id, image_id,
                                                       multiple_choice_answer, answers, ...}]}
  ``<split>2014/COCO_<split>2014_<image_id:012d>.jpg`` (the COCO image folder)
  One SFT record per question, id = question_id, answer = ``multiple_choice_answer``
  (the official single consensus answer among the ten annotators'; the other nine are
  kept out of training, as in LLaVA-1.5's VQAv2 mix). The question gets LLaVA-1.5's
  short-answer instruction appended (`VQA_SHORT_ANSWER_PROMPT`), so that one-word VQA
  targets do not teach the model to answer *every* prompt in one word, which would undo
  the long descriptions RLHF-V trains on (``short_answer_prompt=False`` keeps the bare
  question).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, TypeVar

import pyarrow.parquet as pq

from rlhfv_jax import jsonl
from rlhfv_jax.data.records import (ErrorLog, PreferenceRecord, RecordError, SFTRecord,
                                    as_utf8, make_preference_record,
                                    make_sft_record)

RecordT = TypeVar("RecordT", PreferenceRecord, SFTRecord)
RawItem = tuple[str, Mapping[str, Any]]  # (location, raw fields)

VQA_SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."
RLHFV_ORIGIN_COLUMNS = ("idx", "origin_dataset", "origin_split", "ds_name", "image_path")
# Origin key of a record whose image is a file under the source directory (VQAv2: the
# COCO image), relative to it; builders may store this reference instead of the bytes.
IMAGE_FILE = "image_file"


def validated(raw_items: Iterable[RawItem], make_record: Callable[..., RecordT],
              errors: ErrorLog) -> Iterator[RecordT]:
  """Validates raw items with `make_record`; invalid ones and duplicate ids go to `errors`."""
  first_seen: dict[str, str] = {}
  for location, raw in raw_items:
    try:
      if isinstance(raw, RecordError):  # the raw reader already failed on this item
        raise raw
      record = make_record(raw, location)
      if record.id in first_seen:
        raise RecordError(record.id, f"duplicate id (first at {first_seen[record.id]})",
                          location)
    except RecordError as e:
      errors.handle(e)
      continue
    first_seen[record.id] = location
    yield record


def _read_bytes(path: pathlib.Path, record_id: Optional[str], location: str) -> bytes:
  try:
    return path.read_bytes()
  except OSError as e:
    raise RecordError(record_id, f"cannot read image file {str(path)!r} ({e.strerror})",
                      location) from e


# ----------------------------------------------------------------------------- RLHF-V

RowToRaw = Callable[[Mapping[str, Any], pathlib.Path, str], dict[str, Any]]


def _parquet_raw_rows(directory: pathlib.Path, row_to_raw: RowToRaw
                      ) -> Iterator[tuple[str, Any]]:
  """(location, raw fields or the RecordError) of every row of every parquet file,
  streamed in batches (memory does not grow with the dataset)."""
  files = sorted(directory.rglob("*.parquet"))
  if not files:
    raise FileNotFoundError(f"no *.parquet files under {str(directory)!r}")
  for path in files:
    row_number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
      for row in batch.to_pylist():
        location = f"{path.name} row {row_number}"
        row_number += 1
        try:
          yield location, row_to_raw(row, path.parent, location)
        except RecordError as e:
          yield location, e


def _row_id(row: Mapping[str, Any], location: str) -> str:
  if row.get("idx") is None:
    raise RecordError(None, "missing key 'idx'", location)
  return str(row["idx"])


def _row_image(row: Mapping[str, Any], parquet_dir: pathlib.Path, record_id: str,
               location: str) -> Optional[bytes]:
  """The row's image bytes: inline, else the file at ``image.path`` next to the parquet."""
  image = row.get("image")
  if not isinstance(image, Mapping):
    raise RecordError(record_id, "missing image", location)
  image_bytes = image.get("bytes")
  if image_bytes is None and image.get("path"):
    image_bytes = _read_bytes(parquet_dir / image["path"], record_id, location)
  return image_bytes


def _rlhfv_row_to_raw(row: Mapping[str, Any], parquet_dir: pathlib.Path,
                      location: str) -> dict[str, Any]:
  """Maps one RLHF-V parquet row to the raw fields `make_preference_record` takes."""
  record_id = _row_id(row, location)
  text = as_utf8(record_id, "text", row.get("text"), location)
  try:
    fields = json.loads(text)
  except json.JSONDecodeError as e:
    raise RecordError(record_id, f"field 'text' is not valid JSON ({e})", location) from e
  if not isinstance(fields, dict):
    raise RecordError(record_id, f"field 'text' must hold a JSON object, got "
                      f"{type(fields).__name__}", location)
  return _preference_raw(fields, row, parquet_dir, record_id, location)


def _preference_raw(fields: Mapping[str, Any], row: Mapping[str, Any],
                    parquet_dir: pathlib.Path, record_id: str, location: str
                    ) -> dict[str, Any]:
  """The raw fields of a preference record: texts (and segments) from `fields`, image and
  provenance from the parquet `row`."""
  raw = {k: fields.get(k) for k in ("question", "chosen", "rejected")}
  if "segments" in fields:
    raw["segments"] = fields["segments"]
  raw.update(id=record_id, image=_row_image(row, parquet_dir, record_id, location),
             origin={k: row.get(k) for k in RLHFV_ORIGIN_COLUMNS})
  return raw


def _rlaifv_row_to_raw(row: Mapping[str, Any], parquet_dir: pathlib.Path,
                       location: str) -> dict[str, Any]:
  """Maps one RLAIF-V parquet row (top-level question / chosen / rejected columns)."""
  return _preference_raw(row, row, parquet_dir, _row_id(row, location), location)


def read_rlhfv_parquet(directory: str | pathlib.Path, errors: ErrorLog
                       ) -> Iterator[PreferenceRecord]:
  """Yields the validated records of an RLHF-V parquet directory (see module docstring)."""
  return validated(_parquet_raw_rows(pathlib.Path(directory), _rlhfv_row_to_raw),
                   make_preference_record, errors)


def read_rlaifv_parquet(directory: str | pathlib.Path, errors: ErrorLog
                        ) -> Iterator[PreferenceRecord]:
  """Yields the validated records of an RLAIF-V parquet directory (see module docstring)."""
  return validated(_parquet_raw_rows(pathlib.Path(directory), _rlaifv_row_to_raw),
                   make_preference_record, errors)


# ----------------------------------------------------------------------------- JSONL

def _jsonl_raw_lines(path: pathlib.Path, errors: ErrorLog) -> Iterator[tuple[str, Any]]:
  image_root = path.parent
  where = lambda number: f"{path.name} line {number}"

  def unreadable(e: jsonl.JsonlError) -> None:
    # Not a JSON object, so no record to validate: the line goes to `errors` here.
    error = RecordError(None, e.problem, where(e.line_number))
    error.__cause__ = e.__cause__
    errors.handle(error)

  for line_number, raw in jsonl.read_objects(path, unreadable):
    location = where(line_number)
    try:
      record_id = None if raw.get("id") is None else str(raw["id"])
      if raw.get("image") is not None:
        raw["image"] = _read_bytes(image_root / str(raw["image"]), record_id, location)
      yield location, raw
    except RecordError as e:
      yield location, e


def read_jsonl(directory: str | pathlib.Path, split: str, kind: str, errors: ErrorLog
               ) -> Iterator[PreferenceRecord] | Iterator[SFTRecord]:
  """Yields validated records of ``<directory>/<split>.jsonl``.

  Args:
    directory: folder holding the JSONL files; image paths are relative to it.
    split: file stem, e.g. "train".
    kind: "preference" or "sft".
    errors: the error policy.
  """
  make_record = {"preference": make_preference_record, "sft": make_sft_record}.get(kind)
  if make_record is None:
    raise ValueError(f"read_jsonl: kind={kind!r}; expected 'preference' or 'sft'")
  path = pathlib.Path(directory) / f"{split}.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"no JSONL file {str(path)!r}")
  return validated(_jsonl_raw_lines(path, errors), make_record, errors)


# ----------------------------------------------------------------------------- VQAv2

def vqav2_paths(directory: pathlib.Path, split: str) -> tuple[pathlib.Path, pathlib.Path,
                                                               pathlib.Path]:
  """(questions JSON, annotations JSON, image folder) of the official VQAv2 layout."""
  return (directory / f"v2_OpenEnded_mscoco_{split}2014_questions.json",
          directory / f"v2_mscoco_{split}2014_annotations.json",
          directory / f"{split}2014")


def _load_json_list(path: pathlib.Path, key: str) -> list[Any]:
  if not path.is_file():
    raise FileNotFoundError(f"VQAv2: missing {str(path)!r}")
  with path.open("rb") as f:
    data = json.load(f)
  if not isinstance(data, dict) or not isinstance(data.get(key), list):
    raise ValueError(f"VQAv2: {str(path)!r} has no list under {key!r}")
  return data[key]


def _vqav2_raw_questions(directory: pathlib.Path, split: str, question_suffix: str
                         ) -> Iterator[tuple[str, Any]]:
  questions_path, annotations_path, image_dir = vqav2_paths(directory, split)
  questions = _load_json_list(questions_path, "questions")
  annotations = {a.get("question_id"): a
                 for a in _load_json_list(annotations_path, "annotations")}
  cached_path, cached = None, b""
  for number, question in enumerate(questions):
    location = f"{questions_path.name} question #{number}"
    try:
      if question.get("question_id") is None:
        raise RecordError(None, "missing key 'question_id'", location)
      record_id = str(question["question_id"])
      annotation = annotations.get(question["question_id"])
      if annotation is None:
        raise RecordError(record_id, f"no annotation in {annotations_path.name}", location)
      image_id = question.get("image_id")
      if image_id is None:
        raise RecordError(record_id, "missing key 'image_id'", location)
      if annotation.get("image_id") != image_id:
        raise RecordError(record_id, f"image_id {image_id} disagrees with the annotation's "
                          f"{annotation.get('image_id')}", location)
      if annotation.get("multiple_choice_answer") is None:
        raise RecordError(record_id, "annotation has no 'multiple_choice_answer'", location)
      image_path = image_dir / f"COCO_{split}2014_{int(image_id):012d}.jpg"
      if image_path != cached_path:  # questions of one image come together: read it once
        cached_path, cached = image_path, _read_bytes(image_path, record_id, location)
      image = cached
      yield location, {
          "id": record_id, "image": image,
          "question": (None if question.get("question") is None
                       else question["question"] + question_suffix),
          "answer": annotation.get("multiple_choice_answer"),
          "origin": {"dataset": "vqav2", "split": split, "image_id": image_id,
                     IMAGE_FILE: image_path.relative_to(directory).as_posix(),
                     "question_id": record_id,
                     "answer_type": annotation.get("answer_type"),
                     "question_type": annotation.get("question_type")}}
    except RecordError as e:
      yield location, e


def read_vqav2(directory: str | pathlib.Path, split: str, errors: ErrorLog,
               short_answer_prompt: bool = True) -> Iterator[SFTRecord]:
  """Yields one validated SFT record per VQAv2 question (see the module docstring)."""
  suffix = VQA_SHORT_ANSWER_PROMPT if short_answer_prompt else ""
  return validated(_vqav2_raw_questions(pathlib.Path(directory), split, suffix),
                   make_sft_record, errors)
