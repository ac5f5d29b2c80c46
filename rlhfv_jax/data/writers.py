"""Writers of the JSONL + image folder layout and of the RLHF-V parquet layout: the
inverses of `readers.read_jsonl` and `readers.read_rlhfv_parquet`.

Everything the project itself produces as a dataset (the demo's captions, VQA pairs
and oracle feedback; annotation exports) goes through `write_jsonl`, so what is
written is exactly what the loader reads back: ``read_jsonl(write_jsonl(records))``
gives the same records.

Layout (see `readers`): ``<dir>/<split>.jsonl`` with one JSON object a line and image
paths relative to ``<dir>``. Images are stored once per distinct content under
``images/<sha256 prefix>.<ext>``: records that share an image (several questions about
one picture) share the file.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import pathlib
from typing import Any, Iterable, Union

import pyarrow as pa
import pyarrow.parquet as pq

from rlhfv_jax.data.readers import RLHFV_ORIGIN_COLUMNS
from rlhfv_jax.data.records import PreferenceRecord, Record, SFTRecord

IMAGE_DIR = "images"
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"),
          (b"BM", ".bmp"))


def image_file_name(image: bytes) -> str:
  """``<first 16 hex digits of sha256>.<ext from the magic bytes>`` (".img" if unknown)."""
  ext = next((e for magic, e in _MAGIC if image.startswith(magic)), ".img")
  if ext == ".img" and image[8:12] == b"WEBP":
    ext = ".webp"
  return hashlib.sha256(image).hexdigest()[:16] + ext


def record_row(record: Record, image_path: str) -> dict[str, Any]:
  """The JSON object of one record, its image at `image_path` (relative to the dataset)."""
  row: dict[str, Any] = {"id": record.id, "image": image_path, "question": record.question}
  if isinstance(record, PreferenceRecord):
    row.update(chosen=record.chosen, rejected=record.rejected)
    if record.has_spans:
      row["segments"] = {"chosen": [list(s) for s in record.chosen_spans],
                         "rejected": [list(s) for s in record.rejected_spans]}
  elif isinstance(record, SFTRecord):
    row["answer"] = record.answer
  else:
    raise TypeError(f"write_jsonl: {type(record).__name__} is not a PreferenceRecord or "
                    "SFTRecord")
  if record.origin:
    row["origin"] = dict(record.origin)
  return row


def write_jsonl(directory: Union[str, pathlib.Path], records: Iterable[Record],
                split: str = "train") -> pathlib.Path:
  """Writes ``<directory>/<split>.jsonl`` and the records' images (each content once).

  The JSONL file is written to a temporary name and renamed into place, so a reader
  never sees half a split; writing the same records again leaves the file untouched. Ids must be unique (they key the reference cache).

  Returns:
    The JSONL file's path.
  """
  directory = pathlib.Path(directory)
  (directory / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
  path = directory / f"{split}.jsonl"
  tmp = path.with_name(path.name + ".tmp")
  seen_ids: set[str] = set()
  with tmp.open("w", encoding="utf-8") as f:
    for record in records:
      if record.id in seen_ids:
        raise ValueError(f"write_jsonl: duplicate record id {record.id!r} in {path}")
      seen_ids.add(record.id)
      image_path = f"{IMAGE_DIR}/{image_file_name(record.image)}"
      image_file = directory / image_path
      if not image_file.exists():
        image_file.write_bytes(record.image)
      f.write(json.dumps(record_row(record, image_path), sort_keys=True,
                         ensure_ascii=False) + "\n")
  if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
    # The same records: the file stays as it was, so a dataset built from it (whose
    # fingerprint holds its modification time) stays valid for a re-run.
    tmp.unlink()
  else:
    os.replace(tmp, path)
  return path


RLHFV_PARQUET_SCHEMA = pa.schema(
    [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
     ("text", pa.string())] + [(name, pa.string()) for name in RLHFV_ORIGIN_COLUMNS])


def write_rlhfv_parquet(directory: Union[str, pathlib.Path],
                        records: Iterable[PreferenceRecord],
                        name: str = "train-00000-of-00001.parquet") -> pathlib.Path:
  """Writes preference records as one parquet file in the RLHF-V dataset's layout.

  ``image`` = {bytes, path}, ``text`` = JSON of question, chosen, rejected (and the
  character spans as ``segments`` where the record has them), ``idx`` = the record id,
  and the other origin columns from the record's origin (empty when it has none).
  Written to a temporary name and renamed into place.

  Returns:
    The parquet file's path.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rows: dict[str, list[Any]] = {name: [] for name in RLHFV_PARQUET_SCHEMA.names}
  seen_ids: set[str] = set()
  for record in records:
    if record.id in seen_ids:
      raise ValueError(f"write_rlhfv_parquet: duplicate record id {record.id!r}")
    seen_ids.add(record.id)
    text = {"question": record.question, "chosen": record.chosen, "rejected": record.rejected}
    if record.has_spans:
      text["segments"] = {"chosen": [list(s) for s in record.chosen_spans],
                          "rejected": [list(s) for s in record.rejected_spans]}
    rows["image"].append({"bytes": record.image, "path": None})
    rows["text"].append(json.dumps(text, ensure_ascii=False))
    for column in RLHFV_ORIGIN_COLUMNS:
      rows[column].append(record.id if column == "idx" else record.origin.get(column, ""))
  path = directory / name
  tmp = path.with_name(path.name + ".tmp")
  pq.write_table(pa.table(rows, schema=RLHFV_PARQUET_SCHEMA), tmp)
  os.replace(tmp, path)
  return path
