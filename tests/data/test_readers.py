"""Readers and record validation: good rows round-trip, every bad row names record and problem."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from raw_files import GOOD_ROWS, image_bytes, rlhfv_row
from rlhfv_jax.data import readers
from rlhfv_jax.data.records import (ErrorLog, PreferenceRecord, RecordError,
                                    make_preference_record)

BAD_ROWS = {  # name -> (row, expected record id, expected problem fragment)
    "undecodable image": (rlhfv_row(7, GOOD_ROWS[0], image=b"GIF89a not really an image"),
                          "7", "undecodable image"),
    "truncated jpeg": (rlhfv_row(8, GOOD_ROWS[0], image=image_bytes(8, fmt="JPEG")[:300]),
                       "8", "undecodable image"),
    "missing key": (rlhfv_row(9, {"question": "Q?", "chosen": "A."}), "9",
                    "missing key 'rejected'"),
    "empty answer": (rlhfv_row(10, dict(GOOD_ROWS[0], chosen="  \n")), "10",
                     "field 'chosen' is empty"),
    "identical answers": (rlhfv_row(11, dict(GOOD_ROWS[0], rejected=GOOD_ROWS[0]["chosen"])),
                          "11", "identical"),
    "image placeholder in text": (rlhfv_row(12, dict(GOOD_ROWS[0], question="<image>\nQ?")),
                                  "12", "field 'question' contains the image placeholder"),
    "missing idx": (dict(rlhfv_row(13, GOOD_ROWS[0]), idx=None), None, "missing key 'idx'"),
    "text not JSON": (dict(rlhfv_row(14, GOOD_ROWS[0]), text="{not json"), "14",
                      "not valid JSON"),
    "bad segment span": (rlhfv_row(15, dict(GOOD_ROWS[0], segments={"chosen": [[5, 999]]})),
                         "15", "outside the"),
    "duplicate id": (rlhfv_row(100, GOOD_ROWS[1]), "100", "duplicate id"),
}


def good_rows():
  return [rlhfv_row(100 + i, f, fmt="JPEG" if i % 2 else "PNG") for i, f in enumerate(GOOD_ROWS)]


def test_rlhfv_parquet_good_rows(good_rlhfv_dir):
  records = list(readers.read_rlhfv_parquet(good_rlhfv_dir, ErrorLog("raise")))
  assert [r.id for r in records] == ["100", "101", "102"]
  for record, fields, row in zip(records, GOOD_ROWS, good_rows()):
    assert isinstance(record, PreferenceRecord)
    assert (record.question, record.chosen, record.rejected) == (
        fields["question"], fields["chosen"], fields["rejected"])
    assert record.image == row["image"]["bytes"]
    assert not record.has_spans
    assert record.origin == {"idx": record.id, "origin_dataset": "coco", "origin_split": "train",
                             "ds_name": "RLHF-V", "image_path": record.origin["image_path"]}


def test_rlhfv_image_from_path_when_bytes_are_null(make_rlhfv_dir, tmp_path):
  row = rlhfv_row(5, GOOD_ROWS[2])
  directory = tmp_path / "rlhfv"
  directory.mkdir()
  (directory / "5.jpg").write_bytes(row["image"]["bytes"])
  make_rlhfv_dir([dict(row, image={"bytes": None, "path": "5.jpg"})])
  (record,) = readers.read_rlhfv_parquet(directory, ErrorLog("raise"))
  assert record.image == row["image"]["bytes"]


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_rlhfv_bad_row_fails_fast_naming_record_and_problem(make_rlhfv_dir, name):
  row, record_id, problem = BAD_ROWS[name]
  directory = make_rlhfv_dir(good_rows() + [row])
  with pytest.raises(RecordError) as info:
    list(readers.read_rlhfv_parquet(directory, ErrorLog("raise")))
  assert info.value.record_id == record_id
  assert problem in str(info.value)
  assert f"record {record_id!r}" in str(info.value)
  assert "row 3" in str(info.value)  # the location: file and row


def test_rlhfv_non_utf8_text_is_named(make_rlhfv_dir):
  rows = [dict(r, text=r["text"].encode()) for r in good_rows()]
  rows.append(dict(rlhfv_row(20, GOOD_ROWS[0]), text=b'{"question": "caf\xe9?"}'))
  directory = make_rlhfv_dir(rows, text_type=pa.binary())
  with pytest.raises(RecordError, match=r"record '20' .*'text' is not valid UTF-8"):
    list(readers.read_rlhfv_parquet(directory, ErrorLog("raise")))


def test_rlhfv_skip_policy_counts_and_writes_every_skipped_id(make_rlhfv_dir, tmp_path):
  bad = [row for row, _, _ in BAD_ROWS.values()]
  make_rlhfv_dir(good_rows() + bad)
  # A second file whose text column is binary, holding one non-UTF-8 row.
  directory = make_rlhfv_dir([dict(rlhfv_row(20, GOOD_ROWS[0]), text=b'{"q": "\xff"}')],
                             text_type=pa.binary(), name="train-00001-of-00002.parquet")
  run_dir = tmp_path / "run"
  errors = ErrorLog("skip", run_dir, name="rlhfv")
  records = list(readers.read_rlhfv_parquet(directory, errors))
  assert [r.id for r in records] == ["100", "101", "102"]
  lines = [json.loads(l) for l in (run_dir / "skipped_rlhfv.jsonl").read_text().splitlines()]
  expected_ids = sorted([i for _, i, _ in BAD_ROWS.values()] + ["20"], key=str)
  assert sorted((l["id"] for l in lines), key=str) == expected_ids
  assert errors.num_skipped == len(lines) == len(BAD_ROWS) + 1
  problems = {l["id"]: l["problem"] for l in lines}
  assert "UTF-8" in problems["20"] and "identical" in problems["11"]


def test_error_log_rejects_skip_without_run_dir_and_unknown_policy():
  with pytest.raises(ValueError, match="run_dir"):
    ErrorLog("skip")
  with pytest.raises(ValueError, match="expected one of"):
    ErrorLog("ignore")


def test_explicit_segments_are_validated_and_kept():
  raw = dict(GOOD_ROWS[0], id="s1", image=image_bytes(1),
             segments={"chosen": [[12, 20]], "rejected": []})
  record = make_preference_record(raw)
  assert record.has_spans and record.chosen_spans == ((12, 20),) and record.rejected_spans == ()
  for spans in ([[5, 3]], [[0, 4], [2, 6]], [["a", 1]], [[0, 200]]):
    with pytest.raises(RecordError, match="record 's1'"):
      make_preference_record(dict(raw, segments={"chosen": spans}))


def test_lone_surrogate_text_is_not_utf8():
  raw = dict(GOOD_ROWS[0], id="x", image=image_bytes(1), question="caf\udce9?")
  with pytest.raises(RecordError, match="'question' is not valid UTF-8"):
    make_preference_record(raw)


def test_jsonl_preference_and_sft(make_jsonl_dir):
  lines = [dict(id=f"j{i}", image=image_bytes(i), **f) for i, f in enumerate(GOOD_ROWS)]
  lines[0]["segments"] = {"chosen": [[11, 19]], "rejected": [[11, 18]]}
  directory = make_jsonl_dir(lines)
  records = list(readers.read_jsonl(directory, "train", "preference", ErrorLog("raise")))
  assert [r.id for r in records] == ["j0", "j1", "j2"]
  assert records[0].chosen[11:19] == "blue mug" and records[0].rejected[11:18] == "red cup"
  assert records[0].image == image_bytes(0)

  sft = make_jsonl_dir([dict(id="s", image=image_bytes(3), question="Q?", answer="A.")], "val")
  (record,) = readers.read_jsonl(sft, "val", "sft", ErrorLog("raise"))
  assert (record.id, record.question, record.answer) == ("s", "Q?", "A.")


@pytest.mark.parametrize("line, problem", [
    (b'{"id": "x", "question": "caf\xe9"}', "not valid UTF-8"),
    (b'{"id": "x", broken', "not valid JSON"),
    (b'{"id": "x", "image": "images/nope.png", "question": "q", "chosen": "a", '
     b'"rejected": "b"}', "cannot read image file"),
])
def test_jsonl_bad_lines_name_the_line(make_jsonl_dir, line, problem):
  directory = make_jsonl_dir([line])
  with pytest.raises(RecordError, match=problem) as info:
    list(readers.read_jsonl(directory, "train", "preference", ErrorLog("raise")))
  assert "train.jsonl line 1" in str(info.value)


def test_vqav2_uses_multiple_choice_answer_and_names_bad_questions(make_vqav2_dir, tmp_path):
  items = [(1, "What is it?", "dog"), (1, "How many?", "2"), (2, "Color?", "red"),
           (3, "Where?", "park"), (4, "Who?", "man")]
  directory = make_vqav2_dir(items, missing_images=(3,), broken_images=(4,))
  errors = ErrorLog("skip", tmp_path / "run", name="vqa")
  records = list(readers.read_vqav2(directory, "val", errors))
  suffix = "\nAnswer the question using a single word or phrase."
  assert [(r.question, r.answer) for r in records] == [(q + suffix, a) for _, q, a in items[:3]]
  bare = list(readers.read_vqav2(directory, "val", ErrorLog("skip", tmp_path / "run2"),
                                 short_answer_prompt=False))
  assert [r.question for r in bare] == [q for _, q, _ in items[:3]]
  assert [r.id for r in records] == ["1000", "1001", "2002"]
  assert records[0].image == records[1].image  # both questions of COCO image 1
  assert records[0].origin["image_id"] == "1"
  assert errors.skipped_ids == ["3003", "4004"]
  with pytest.raises(RecordError, match=r"record '3003' .*cannot read image file"):
    list(readers.read_vqav2(directory, "val", ErrorLog("raise")))
