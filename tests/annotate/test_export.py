"""Export: both formats read back through the data layer, agreement, and a DDPO run on
what annotators produced."""

from __future__ import annotations

import json

import numpy as np
import pytest

import config_files
from rlhfv_jax.annotate import __main__ as cli
from rlhfv_jax.annotate import export as export_lib
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data import readers, tfds_builders
from rlhfv_jax.data.records import ErrorLog, read_skipped
from rlhfv_jax.train import metrics as metrics_lib
from rlhfv_jax.stages import training

from .helpers import ANSWERS


def _submit(store, who, item_id, verdict, corrected=None):
  return store.submit(who, item_id, verdict, corrected, lease_token="",
                      submission_id=f"{who}/{item_id}")


def _records(directory, kind="preference", reader="jsonl"):
  errors = ErrorLog("raise")
  if reader == "parquet":
    return list(readers.read_rlhfv_parquet(directory, errors))
  return list(readers.read_jsonl(directory, "train", kind, errors))


def test_export_reads_back_in_both_formats_with_spans(store, image_root, tmp_path):
  fixed = ANSWERS[0][1].replace("red car", "blue truck").replace(" on the street", "")
  _submit(store, "alice", "item0", "corrected", fixed)
  _submit(store, "alice", "item1", "no_hallucination")
  _submit(store, "alice", "item2", "unclear")
  report = export_lib.export(store, image_root, tmp_path / "out")
  assert report == {
      "items": 3, "annotations": 3, "pairs": 1, "no_hallucination": 1, "unclear": 1,
      "items_not_annotated": 0, "annotators": ["alice"], "skipped": [],
      "agreement": {"items_annotated_twice_or_more": 0, "annotator_pairs": 0,
                    "identical_spans_share": None, "mean_character_overlap": None}}
  (jsonl,) = _records(tmp_path / "out" / "preference")
  (parquet,) = _records(tmp_path / "out" / "rlhfv_parquet", reader="parquet")
  for record in (jsonl, parquet):
    assert (record.id, record.question) == ("item0@alice", "Describe the image.")
    assert (record.rejected, record.chosen) == (ANSWERS[0][1], fixed)
    assert record.has_spans
    assert [record.rejected[s:e] for s, e in record.rejected_spans] == [
        "red car", "on the street"]
    assert [record.chosen[s:e] for s, e in record.chosen_spans] == ["blue truck"]
    assert record.image == (image_root / "coco" / "1.png").read_bytes()
  assert jsonl.origin["annotator"] == "alice" and jsonl.origin["sample_temperature"] == "0.7"
  (clean,) = _records(tmp_path / "out" / "no_hallucination", kind="sft")
  assert (clean.id, clean.answer) == ("item1@alice", ANSWERS[1][1])
  unclear = [json.loads(line) for line in
             (tmp_path / "out" / "unclear.jsonl").read_text().splitlines()]
  assert [(u["item_id"], u["annotator"]) for u in unclear] == [("item2", "alice")]


def test_the_annotators_edits_are_exported_as_they_made_them(store, image_root, tmp_path):
  original = "A red car waits at a traffic light while two dogs play on the sidewalk."
  corrected = "A red car is parked while a dog plays on the sidewalk."
  store.add_items([store_lib.Item("light", "coco/1.png", "Describe.", original)])
  at = lambda text, first, after: (text.index(first), text.index(after))
  store.submit("alice", "light", "corrected", corrected, lease_token="", submission_id="s",
               edits=[(at(original, "waits", " while"), at(corrected, "is", " while")),
                      (at(original, "two", " on"), at(corrected, "a dog", " on"))])
  export_lib.export(store, image_root, tmp_path / "out")
  (record,) = [r for r in _records(tmp_path / "out" / "preference") if r.id == "light@alice"]
  assert [original[s:e] for s, e in record.rejected_spans] == [
      "waits at a traffic light", "two dogs play"]
  assert [corrected[s:e] for s, e in record.chosen_spans] == ["is parked", "a dog plays"]


def test_agreement_over_doubly_annotated_items(store, image_root, tmp_path):
  # item0: both mark exactly "red" -> identical. item1: alice marks "cat" (3 characters),
  # bob says no hallucination -> different, overlap 0. item2: only alice -> not counted.
  _submit(store, "alice", "item0", "corrected", ANSWERS[0][1].replace("red", "blue"))
  _submit(store, "bob", "item0", "corrected", ANSWERS[0][1].replace("red", "green"))
  _submit(store, "alice", "item1", "corrected", ANSWERS[1][1].replace("cat", "dog"))
  _submit(store, "bob", "item1", "no_hallucination")
  _submit(store, "alice", "item2", "no_hallucination")
  _submit(store, "carol", "item2", "unclear")
  report = export_lib.export(store, image_root, tmp_path / "out")
  assert report["agreement"] == {"items_annotated_twice_or_more": 2, "annotator_pairs": 2,
                                 "identical_spans_share": 0.5,
                                 "mean_character_overlap": 0.5}
  assert report["pairs"] == 3  # every correction is a pair: alice's and bob's of item0


def test_a_missing_image_is_an_error_naming_the_item(store, image_root, tmp_path):
  _submit(store, "alice", "item2", "corrected", ANSWERS[2][1].replace("Two", "Three"))
  (image_root / "coco" / "3.png").unlink()
  with pytest.raises(ValueError, match="'item2' by 'alice'.*image 'coco/3.png' not found"):
    export_lib.export(store, image_root, tmp_path / "out", error_policy="raise")


def test_command_line_add_then_export(tmp_path, image_root, capsys):
  answers = tmp_path / "answers.jsonl"
  answers.write_text(json.dumps({"id": "a1", "image": "coco/1.png", "prompt": "Describe.",
                                 "answer": "A red car."}) + "\n")
  database = str(tmp_path / "s.sqlite")
  cli.main(["add", "--store", database, "--images", str(image_root), "--items", str(answers)])
  assert "added 1 of 1 items" in capsys.readouterr().out
  store = store_lib.AnnotationStore(database)
  assert store.image_root == str(image_root.resolve())
  _submit(store, "alice", "a1", "corrected", "A blue car.")
  cli.main(["export", "--store", database, "--out", str(tmp_path / "out")])  # root recorded
  assert json.loads(capsys.readouterr().out)["pairs"] == 1
  answers.write_text('{"id": "a2", "image": "coco/1.png"}\n')
  with pytest.raises(ValueError, match=r"answers.jsonl line 1: missing or empty \['prompt', "):
    cli.main(["add", "--store", database, "--items", str(answers)])


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["jsonl_preference", "rlhfv_parquet"])
def test_exported_annotations_train_in_the_ddpo_stage(store, image_root, tmp_path,
                                                      llama_tokenizer_path, dataset):
  """Export -> `ddpo` stage unchanged, on a tiny model: it reads every pair and trains."""
  more = [store_lib.Item(f"extra{k}", f"coco/{1 + k % 3}.png", "What is in the image?",
                         f"A red car and {k + 2} dogs.") for k in range(5)]
  store.add_items(more)
  for item in store.items():
    _submit(store, "alice", item.id, "corrected",
            item.answer.replace("red", "green").replace("cat", "mouse").replace("Two", "Six"))
  export_lib.export(store, image_root, tmp_path / "out")
  config = config_files.load("tiny_cpu.py", "ddpo")
  folder = "preference" if dataset == "jsonl_preference" else "rlhfv_parquet"
  config.data.update(dataset=dataset, source_dir=str(tmp_path / "out" / folder),
                     data_dir=str(tmp_path / "tfds"), tokenizer=str(llama_tokenizer_path),
                     buckets=(64, 96))
  config.train.update(global_batch_size=4, num_steps=3)
  workdir = tmp_path / "run"
  training.run(config, str(workdir))
  split = tfds_builders.open_split(dataset, tmp_path / "tfds", "train")
  assert len(split) == 8  # every exported pair was read
  steps = [r for r in metrics_lib.read_jsonl(workdir) if "loss" in r]
  assert [r["step"] for r in steps] == [1, 2, 3]
  # Step 1: policy == reference, so the DDPO loss is log 2; by step 3 it learned.
  assert steps[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)
  assert steps[-1]["loss"] < np.log(2) - 0.1 and steps[-1]["rewards/margin"] > 0


def test_export_skips_and_lists_items_whose_image_cannot_be_read(store, image_root,
                                                                 tmp_path, capsys):
  """One item with a bad image never stops the export: it is left out and named."""
  (image_root / "coco" / "link.png").symlink_to(tmp_path / "secret.txt")
  store.add_items([store_lib.Item("sneaky", "coco/link.png", "Describe.", "A red car."),
                   store_lib.Item("gone", "coco/missing.png", "Describe.", "A red car.")])
  _submit(store, "alice", "item0", "corrected", ANSWERS[0][1].replace("red", "blue"))
  _submit(store, "alice", "sneaky", "corrected", "A blue car.")
  _submit(store, "bob", "gone", "no_hallucination")
  report = export_lib.export(store, image_root, tmp_path / "out")
  assert (report["pairs"], report["no_hallucination"]) == (1, 0)
  assert [(s["item_id"], s["annotator"], s["image"]) for s in report["skipped"]] == [
      ("sneaky", "alice", "coco/link.png"), ("gone", "bob", "coco/missing.png")]
  assert "outside the image root" in report["skipped"][0]["problem"]
  assert "not found" in report["skipped"][1]["problem"]
  assert str(tmp_path) not in json.dumps(report)
  listed = read_skipped(tmp_path / "out", "export")
  assert [row["id"] for row in listed] == ["sneaky@alice", "gone@bob"]
  (record,) = _records(tmp_path / "out" / "preference")
  assert record.id == "item0@alice"
  # The command line does the same and names them; "raise" stops at the first.
  database = str(store.path)
  assert cli.main(["export", "--store", database, "--out", str(tmp_path / "cli")]) == 0
  out = capsys.readouterr()
  assert len(json.loads(out.out)["skipped"]) == 2 and "'sneaky'" in out.err
  with pytest.raises(ValueError, match="'sneaky'.*outside the image root"):
    cli.main(["export", "--store", database, "--out", str(tmp_path / "strict"),
              "--error_policy", "raise"])
