"""TFDS builders: local dir -> array_record -> tfds.data_source, without TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from raw_files import GOOD_ROWS, image_bytes, rlaifv_table, rlhfv_row
from tensorflow_datasets.core import shuffle as tfds_shuffle

from rlhfv_jax.data import readers, spilling_shuffler, tfds_builders
from rlhfv_jax.data.records import ErrorLog, RecordError


def test_rlhfv_parquet_round_trip_through_array_record(good_rlhfv_dir, tmp_path):
  data_dir = tmp_path / "tfds"
  builder = tfds_builders.prepare("rlhfv_parquet", source_dir=good_rlhfv_dir, data_dir=data_dir)
  assert builder.info.file_format.value == "array_record"
  assert list((data_dir / "rlhfv_parquet" / "1.0.0").glob("*.array_record*"))
  source = tfds_builders.open_split("rlhfv_parquet", data_dir, "train")
  expected = list(readers.read_rlhfv_parquet(good_rlhfv_dir, ErrorLog("raise")))
  assert len(source) == 3
  assert [source[i] for i in range(len(source))] == expected  # same order, every field
  assert "tensorflow" not in sys.modules


def test_jsonl_builders_keep_spans_and_make_one_split_per_file(make_jsonl_dir, tmp_path):
  lines = [dict(id=f"j{i}", image=image_bytes(i), **f) for i, f in enumerate(GOOD_ROWS)]
  lines[1]["segments"] = {"chosen": [], "rejected": [[30, 38]]}
  make_jsonl_dir(lines[:2], split="train")
  directory = make_jsonl_dir(lines[2:], split="test")
  data_dir = tmp_path / "tfds"
  tfds_builders.prepare("jsonl_preference", source_dir=directory, data_dir=data_dir)
  train = tfds_builders.open_split("jsonl_preference", data_dir, "train")
  test = tfds_builders.open_split("jsonl_preference", data_dir, "test")
  assert [train[i].id for i in range(2)] == ["j0", "j1"] and test[0].id == "j2"
  assert not train[0].has_spans and train[0].chosen_spans == ()
  assert train[1].has_spans and train[1].rejected_spans == ((30, 38),)
  assert train[1].chosen_spans == ()

  sft_dir = tmp_path / "sft"
  sft = [dict(id="s0", image=image_bytes(9), question="Q?", answer="A.")]
  (sft_dir / "images").mkdir(parents=True)
  (sft_dir / "images" / "s0.png").write_bytes(image_bytes(9))
  (sft_dir / "train.jsonl").write_text(json.dumps(dict(sft[0], image="images/s0.png")))
  tfds_builders.prepare("jsonl_sft", source_dir=sft_dir, data_dir=data_dir)
  record = tfds_builders.open_split("jsonl_sft", data_dir, "train")[0]
  assert (record.id, record.answer, record.image) == ("s0", "A.", image_bytes(9))
  assert "tensorflow" not in sys.modules


def test_vqav2_builder_skip_policy_lists_skipped_ids(make_vqav2_dir, tmp_path):
  directory = make_vqav2_dir([(1, "What?", "dog"), (2, "Where?", "park"), (3, "Who?", "man")],
                             missing_images=(2,))
  run_dir = tmp_path / "run"
  tfds_builders.prepare("vqav2", source_dir=directory, data_dir=tmp_path / "tfds",
                        error_policy="skip", run_dir=run_dir)
  source = tfds_builders.open_split("vqav2", tmp_path / "tfds", "val", image_root=directory)
  assert [source[i].answer for i in range(len(source))] == ["dog", "man"]
  (line,) = (run_dir / "skipped_vqav2_val.jsonl").read_text().splitlines()
  assert json.loads(line)["id"] == "2001"
  assert "tensorflow" not in sys.modules


def test_vqav2_stores_each_image_once_in_the_coco_folder(make_vqav2_dir, tmp_path):
  """Questions keep a reference to their COCO image, read back when loaded; the built
  dataset holds no image bytes."""
  items = [(1, f"Question {q}?", "yes") for q in range(6)] + [(2, "Color?", "red")]
  directory = make_vqav2_dir(items)
  data_dir = tmp_path / "tfds"
  tfds_builders.prepare("vqav2", source_dir=directory, data_dir=data_dir)
  coco = directory / "val2014"
  stored = tfds.data_source("vqav2", data_dir=str(data_dir), split="val", download=False)
  assert [bytes(stored[i]["image"]) for i in range(len(stored))] == [b""] * 7
  source = tfds_builders.open_split("vqav2", data_dir, "val", image_root=directory)
  records = [source[i] for i in range(len(source))]
  assert len(records) == 7
  for record in records:
    image_file = coco / f"COCO_val2014_{int(record.origin['image_id']):012d}.jpg"
    assert record.image == image_file.read_bytes()
    assert record.origin["image_file"] == f"val2014/{image_file.name}"
  # Without the COCO folder the records cannot be completed: a clear error, not b"".
  bare = tfds_builders.open_split("vqav2", data_dir, "val")
  with pytest.raises(ValueError, match="stores a reference to its image.*image_root"):
    bare[0]
  (coco / "COCO_val2014_000000000002.jpg").unlink()
  with pytest.raises(FileNotFoundError, match="cannot read its image .*000000000002.jpg"):
    [source[i] for i in range(len(source))]


def test_builder_fails_fast_on_a_bad_record(make_rlhfv_dir, tmp_path):
  directory = make_rlhfv_dir([rlhfv_row(1, GOOD_ROWS[0]),
                              rlhfv_row(2, GOOD_ROWS[1], image=b"\x89PNG broken")])
  with pytest.raises(RecordError, match=r"record '2' .*undecodable image"):
    tfds_builders.prepare("rlhfv_parquet", source_dir=directory, data_dir=tmp_path / "tfds")


def test_unknown_dataset_and_missing_source_dir(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset"):
    tfds_builders.prepare("coco", source_dir=tmp_path, data_dir=tmp_path)
  with pytest.raises(ValueError, match="needs source_dir"):
    tfds_builders.RlhfvParquet(data_dir=str(tmp_path)).download_and_prepare()


def test_a_built_dataset_is_refused_once_its_source_dir_changed(make_jsonl_dir, tmp_path):
  lines = [dict(id=f"j{i}", image=image_bytes(i), **f) for i, f in enumerate(GOOD_ROWS)]
  directory = make_jsonl_dir(lines[:2])
  data_dir = directory / "tfds"  # inside the source: building must not change its fingerprint
  tfds_builders.prepare("jsonl_preference", source_dir=directory, data_dir=data_dir)
  built = data_dir / "jsonl_preference" / "1.0.0"
  assert json.loads((built / "metadata.json").read_text())["source_fingerprint"] == (
      tfds_builders.source_fingerprint(directory, exclude=[data_dir]))
  # Unchanged source: the built version is reused as is.
  tfds_builders.prepare("jsonl_preference", source_dir=directory, data_dir=data_dir)

  make_jsonl_dir(lines)  # a third record appended to train.jsonl
  with pytest.raises(ValueError, match=r"built from different files .* source_dir=.*jsonl.*"
                                       r"Delete .*1\.0\.0.* or set config\.data\.data_dir"):
    tfds_builders.prepare("jsonl_preference", source_dir=directory, data_dir=data_dir)
  assert len(tfds_builders.open_split("jsonl_preference", data_dir, "train")) == 2  # stale
  # Same size, new content (an image rewritten with as many bytes): still refused.
  image = directory / "images" / "train0.png"
  original, stat = image.read_bytes(), image.stat()
  image.write_bytes(original[::-1])
  os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
  with pytest.raises(ValueError, match="built from different files"):
    tfds_builders.prepare("jsonl_preference", source_dir=directory, data_dir=data_dir)
  image.write_bytes(original)

  shutil.rmtree(built)  # what the message says to do
  tfds_builders.prepare("jsonl_preference", source_dir=directory, data_dir=data_dir)
  assert len(tfds_builders.open_split("jsonl_preference", data_dir, "train")) == 3


def test_a_dataset_built_without_a_fingerprint_is_refused(make_jsonl_dir, tmp_path):
  lines = [dict(id=f"j{i}", image=image_bytes(i), **f) for i, f in enumerate(GOOD_ROWS)]
  directory = make_jsonl_dir(lines)
  tfds_builders.prepare("jsonl_preference", source_dir=directory, data_dir=tmp_path / "tfds")
  (tmp_path / "tfds" / "jsonl_preference" / "1.0.0" / "metadata.json").unlink()
  with pytest.raises(ValueError, match="built without a source fingerprint"):
    tfds_builders.prepare("jsonl_preference", source_dir=directory, data_dir=tmp_path / "tfds")


def test_builds_past_the_memory_limit_without_tensorflow(make_jsonl_dir, tmp_path, monkeypatch):
  """The spill path, with a limit of a few examples instead of TFDS's 1 GB: sorted runs on
  disk, memory bounded by the limit, and the very records (in the very order) that an
  all-in-memory build gives."""
  lines = [dict(id=f"r{i:02d}", image=image_bytes(i), **GOOD_ROWS[i % len(GOOD_ROWS)])
           for i in range(30)]
  directory = make_jsonl_dir(lines[::-1])  # source order differs from id order
  spilled = []
  spill = spilling_shuffler.SpillingShuffler._spill

  def counting_spill(self):
    spilled.append(self._buffer_bytes)
    spill(self)
  monkeypatch.setattr(spilling_shuffler.SpillingShuffler, "_spill", counting_spill)

  tfds_builders.prepare("jsonl_preference", source_dir=directory, data_dir=tmp_path / "mem")
  assert not spilled  # the default limit holds 30 small examples in memory
  largest = max(len(image_bytes(i)) for i in range(30)) + 2000  # image + texts, serialized
  limit = 2 * largest  # a few examples
  tfds_builders.prepare("jsonl_preference", source_dir=directory, data_dir=tmp_path / "disk",
                        spill_bytes=limit)
  assert len(spilled) >= 3 and max(spilled) <= limit + largest
  assert not list((tmp_path / "disk").rglob("spill_*"))  # runs are deleted once merged
  in_memory = tfds_builders.open_split("jsonl_preference", tmp_path / "mem", "train")
  on_disk = tfds_builders.open_split("jsonl_preference", tmp_path / "disk", "train")
  assert len(on_disk) == len(in_memory) == 30
  assert [on_disk[i] for i in range(30)] == [in_memory[i] for i in range(30)]
  assert "tensorflow" not in sys.modules


def test_spilling_shuffler_refuses_duplicate_keys_across_runs(tmp_path):
  with spilling_shuffler.use_spilling_shuffler(spill_bytes=0) as cls:
    shuffler = cls(tmp_path, hash_salt="train", disable_shuffling=True)
    for key in ("b", "a", "b"):
      shuffler.add(key, key.encode())
    assert shuffler.num_runs == 3 and shuffler.max_buffer_bytes == 1
    with pytest.raises(tfds_shuffle.DuplicatedKeysError):
      list(shuffler)


def test_rlaifv_parquet_and_the_corrected_share_report(good_rlhfv_dir, tmp_path):
  rlaifv_dir = tmp_path / "rlaifv"
  rlaifv_dir.mkdir()
  rows = [dict(idx=7, question="Describe the image.",
               chosen="Two people walk along a beach at sunset.",
               rejected="A man is riding a horse near the sea."),
          dict(idx=8, question="What is this?", chosen="It is a red kite in the sky.",
               rejected="It is a red kite flying over the park.")]
  pq.write_table(rlaifv_table(rows), rlaifv_dir / "RLAIF-V-Dataset_000.parquet")
  builder = tfds_builders.prepare("rlaifv_parquet", source_dir=rlaifv_dir,
                                  data_dir=tmp_path / "tfds")
  split = tfds_builders.open_split("rlaifv_parquet", tmp_path / "tfds", "train")
  assert [split[i].id for i in range(2)] == ["7", "8"]
  assert (split[1].chosen, split[1].rejected) == (rows[1]["chosen"], rows[1]["rejected"])
  assert split[0].image == image_bytes(7) and split[0].origin["ds_name"] == "RLAIF-V"
  # Word-level diff, hand-counted. Pair 7 (8 + 9 words) shares no 3-word run: all 17
  # corrected. Pair 8 (8 + 9 words) keeps "It is a red kite": "in the sky." and "flying
  # over the park." are corrected, 3 + 4 words. -> 24 / 34.
  metadata = dict(builder.info.metadata.items())
  assert metadata["corrected_word_share/train"] == round(24 / 34, 4)
  # RLHF-V's corrections touch a few words: "red cup"/"blue mug" (4 of 18), "cat and a
  # lamp."/"lamp." (5 of 23: a 1-word match is below min_match), "yellow."/"green."
  # (2 of 8) -> 11 / 49.
  rlhfv = tfds_builders.prepare("rlhfv_parquet", source_dir=good_rlhfv_dir,
                                data_dir=tmp_path / "tfds_rlhfv")
  assert dict(rlhfv.info.metadata.items())["corrected_word_share/train"] == round(11 / 49, 4)
  # ... and the share survives reopening the built dataset.
  reopened = tfds_builders.prepare("rlhfv_parquet", source_dir=good_rlhfv_dir,
                                   data_dir=tmp_path / "tfds_rlhfv")
  assert dict(reopened.info.metadata.items())["corrected_word_share/train"] == round(11 / 49, 4)
