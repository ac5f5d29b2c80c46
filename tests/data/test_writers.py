"""The JSONL writer is the exact inverse of `readers.read_jsonl`."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from rlhfv_jax.data import readers, records, writers


def _png(seed: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 5, 3), np.uint8)).save(
      buffer, "PNG")
  return buffer.getvalue()


def test_round_trip_and_images_stored_once(tmp_path):
  shared, other = _png(0), _png(1)
  preference = [
      records.PreferenceRecord("p0", shared, "Describe.", "A red cup.", "A blue cup.",
                               origin={"policy": "sft"}),
      records.PreferenceRecord("p1", other, "Describe.", "A cat sits.", "A dog sits.",
                               has_spans=True, chosen_spans=((2, 5),),
                               rejected_spans=((2, 5),)),
      records.PreferenceRecord("p2", shared, "Q?", "Yes, a ü.", "No.", has_spans=True),
  ]
  writers.write_jsonl(tmp_path / "pref", preference)
  errors = records.ErrorLog("raise")
  assert list(readers.read_jsonl(tmp_path / "pref", "train", "preference", errors)) == preference
  assert len(list((tmp_path / "pref" / "images").iterdir())) == 2  # `shared` once
  rows = [json.loads(l) for l in (tmp_path / "pref" / "train.jsonl").read_text().splitlines()]
  assert rows[0]["image"] == rows[2]["image"] != rows[1]["image"]
  assert rows[0]["image"].endswith(".png") and "segments" not in rows[0]
  assert rows[2]["segments"] == {"chosen": [], "rejected": []}  # "no correction marked" kept

  sft = [records.SFTRecord("s0", other, "What?", "A dog.", origin={"source": "vqa"})]
  writers.write_jsonl(tmp_path / "sft", sft, split="val")
  assert list(readers.read_jsonl(tmp_path / "sft", "val", "sft", errors)) == sft


def test_duplicate_ids_are_refused_and_nothing_half_written(tmp_path):
  record = records.SFTRecord("s0", _png(0), "What?", "A dog.")
  with pytest.raises(ValueError, match="duplicate record id 's0'"):
    writers.write_jsonl(tmp_path, [record, record])
  assert not (tmp_path / "train.jsonl").exists()


def test_image_names_follow_content():
  png, jpeg = _png(0), b"\xff\xd8\xff\xe0rest"
  assert writers.image_file_name(png).endswith(".png")
  assert writers.image_file_name(jpeg).endswith(".jpg")
  assert writers.image_file_name(png) == writers.image_file_name(bytes(png))
  assert writers.image_file_name(png) != writers.image_file_name(_png(1))


def test_rewriting_the_same_records_leaves_the_files_untouched(tmp_path):
  """A dataset built from the files fingerprints their modification times: a re-run that
  writes the same records must not make it stale; other records do replace the file."""
  sft = [records.SFTRecord("s0", _png(0), "What?", "A dog.")]
  path = writers.write_jsonl(tmp_path, sft)
  image = next((tmp_path / "images").iterdir())
  before = (path.stat().st_mtime_ns, image.stat().st_mtime_ns)
  os.utime(path, ns=(before[0] - 10**9, before[0] - 10**9))  # older, whatever the clock
  os.utime(image, ns=(before[1] - 10**9, before[1] - 10**9))
  old = (path.stat().st_mtime_ns, image.stat().st_mtime_ns)
  writers.write_jsonl(tmp_path, sft)
  assert (path.stat().st_mtime_ns, image.stat().st_mtime_ns) == old
  assert not list(tmp_path.glob("*.tmp"))
  writers.write_jsonl(tmp_path, [records.SFTRecord("s0", _png(0), "What?", "A cat.")])
  assert path.stat().st_mtime_ns != old[0] and "A cat." in path.read_text()
