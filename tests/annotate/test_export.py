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
      "pairs_by_source": {"human": 1, "ai": 0, "ai_ranking": 0},
      "pairs_left_out_by_source": {}, "items_not_annotated": 0, "annotators": ["alice"], "skipped": [],
      "agreement": {"items_annotated_twice_or_more": 0, "annotator_pairs": 0,
                    "identical_spans_share": None, "mean_character_overlap": None,
                    "ai_vs_human": {"items": 0, "pairs": 0, "same_verdict_share": None,
                                    "corrected_pairs": 0, "identical_spans_share": None,
                                    "mean_character_overlap": None}}}
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
  assert jsonl.origin["source"] == "human"
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
  people = {k: v for k, v in report["agreement"].items() if k != "ai_vs_human"}
  assert people == {"items_annotated_twice_or_more": 2, "annotator_pairs": 2,
                    "identical_spans_share": 0.5, "mean_character_overlap": 0.5}
  assert report["agreement"]["ai_vs_human"]["pairs"] == 0
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


def test_records_are_tagged_with_their_source_and_ai_agreement_is_reported(
    store, image_root, tmp_path):
  """By hand. item0: the AI marks "red" (3 characters), alice "red car" (7), bob "red".
  item1: the AI finds no hallucination, alice corrects "cat". item2: the AI and bob both
  mark "Two"; alice's "unclear" counts nowhere.
  AI vs people: pairs (AI, alice)@0, (AI, bob)@0, (AI, alice)@1, (AI, bob)@2 over 3 items;
  same verdict 3 of 4; both corrected 3, identical spans 2 of 3, overlaps 3/7, 1, 1.
  People: alice and bob on item0 only: not identical, overlap 3/7."""
  def fix(who, item, old, new):
    _submit(store, who, f"item{item}", "corrected", ANSWERS[item][1].replace(old, new))
  fix("ai:l", 0, "red", "blue")
  fix("alice", 0, "red car", "blue truck")
  fix("bob", 0, "red", "green")
  _submit(store, "ai:l", "item1", "no_hallucination")
  fix("alice", 1, "cat", "dog")
  fix("ai:l", 2, "Two", "Three")
  fix("bob", 2, "Two", "Four")
  _submit(store, "alice", "item2", "unclear")
  report = export_lib.export(store, image_root, tmp_path / "out")
  ai_vs_human = report["agreement"].pop("ai_vs_human")
  assert report["agreement"] == pytest.approx({
      "items_annotated_twice_or_more": 1, "annotator_pairs": 1,
      "identical_spans_share": 0.0, "mean_character_overlap": 3 / 7})
  assert ai_vs_human == pytest.approx({
      "items": 3, "pairs": 4, "same_verdict_share": 0.75, "corrected_pairs": 3,
      "identical_spans_share": 2 / 3, "mean_character_overlap": (3 / 7 + 1 + 1) / 3})
  assert report["pairs_by_source"] == {"human": 4, "ai": 2, "ai_ranking": 0}
  assert report["pairs"] == 6 and report["no_hallucination"] == 1
  pairs = {r.id: r.origin for r in _records(tmp_path / "out" / "preference")}
  assert {i: (o["source"], o["annotator"]) for i, o in pairs.items()} == {
      "item0@ai:l": ("ai", "ai:l"), "item0@alice": ("human", "alice"),
      "item0@bob": ("human", "bob"), "item1@alice": ("human", "alice"),
      "item2@ai:l": ("ai", "ai:l"), "item2@bob": ("human", "bob")}
  (clean,) = _records(tmp_path / "out" / "no_hallucination", kind="sft")
  assert (clean.id, clean.origin["source"]) == ("item1@ai:l", "ai")


def _ranking_file(path, *rows):
  path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
  return path


def _ranked(chosen, rejected, chosen_score=0, rejected_score=-2, labeler="ai:l"):
  return {"chosen_item_id": chosen, "rejected_item_id": rejected,
          "chosen_score": chosen_score, "rejected_score": rejected_score, "labeler": labeler}


@pytest.fixture
def siblings(store):
  """Two more answers to item0's question (image and prompt), one to another prompt and
  one about another image."""
  store.add_items([
      store_lib.Item("k1", "coco/1.png", "Describe the image.", "A red car on a street."),
      store_lib.Item("k2", "coco/1.png", "Describe the image.", "A car, three dogs, a cat."),
      store_lib.Item("asked", "coco/1.png", "What color is the car?", "Red."),
      store_lib.Item("elsewhere", "coco/2.png", "Describe the image.", "A cat.")])
  return store


def test_ranking_pairs_are_exported_as_preference_records(siblings, image_root, tmp_path):
  _submit(siblings, "alice", "item0", "corrected", ANSWERS[0][1].replace("red", "blue"))
  pairs = _ranking_file(tmp_path / "pairs.jsonl", _ranked("k1", "k2", 0, -3), "\n",
                        _ranked("k1", "item0", -1.0, -2.5, "ai:m"))
  report = export_lib.export(siblings, image_root, tmp_path / "out", ranking_pairs=pairs)
  assert report["pairs_by_source"] == {"human": 1, "ai": 0, "ai_ranking": 2}
  assert report["pairs"] == 3
  for reader in ("jsonl", "parquet"):
    folder = "preference" if reader == "jsonl" else "rlhfv_parquet"
    records = {r.id: r for r in _records(tmp_path / "out" / folder, reader=reader)}
    assert set(records) == {"item0@alice", "k1>k2@ai:l", "k1>item0@ai:m"}
    ranked = records["k1>k2@ai:l"]
    assert (ranked.question, ranked.chosen, ranked.rejected) == (
        "Describe the image.", "A red car on a street.", "A car, three dogs, a cat.")
    assert not ranked.has_spans and records["item0@alice"].has_spans
    assert ranked.image == (image_root / "coco" / "1.png").read_bytes()
  origin = {r.id: r.origin for r in _records(tmp_path / "out" / "preference")}
  assert origin["k1>k2@ai:l"] == {
      "item_id": "k1", "rejected_item_id": "k2", "chosen_score": "0", "rejected_score": "-3",
      "source": "ai_ranking", "annotator": "ai:l", "image_path": "coco/1.png",
      "ds_name": "rlhfv_jax.annotate", "origin_split": "train"}
  assert origin["k1>item0@ai:m"]["chosen_score"] == "-1.0"
  # The command line's flag does the same.
  assert cli.main(["export", "--store", str(siblings.path), "--out", str(tmp_path / "cli"),
                   "--ranking_pairs", str(pairs)]) == 0
  assert len(_records(tmp_path / "cli" / "preference")) == 3
  # One source alone (the ranking pairs): the others are counted, not written.
  assert cli.main(["export", "--store", str(siblings.path), "--out", str(tmp_path / "rank"),
                   "--ranking_pairs", str(pairs), "--sources", "ai_ranking"]) == 0
  assert {r.id for r in _records(tmp_path / "rank" / "preference")} == {
      "k1>k2@ai:l", "k1>item0@ai:m"}
  only = json.loads((tmp_path / "rank" / export_lib.REPORT).read_text())
  assert only["pairs_by_source"] == {"human": 0, "ai": 0, "ai_ranking": 2}
  assert only["pairs_left_out_by_source"] == {"human": 1, "ai": 0}
  with pytest.raises(ValueError, match="export sources"):
    export_lib.export(siblings, image_root, tmp_path / "x", sources=("people",))


@pytest.mark.parametrize("rows, line, problem", [
    (['{"chosen_item_id": "k1",\n'], 1, "not valid JSON"),
    ([_ranked("k1", "k2"), "[1, 2]\n"], 2, "expected a JSON object"),
    ([{k: v for k, v in _ranked("k1", "k2").items() if k != "labeler"}], 1,
     r"missing \['labeler'\]"),
    ([_ranked("k1", "nope")], 1, "rejected_item_id: no item 'nope' in the store"),
    ([_ranked("", "k2")], 1, "chosen_item_id must be a non-empty string"),
    ([_ranked("k1", "k2", labeler=7)], 1, "labeler must be a non-empty string"),
    ([_ranked("k1", "k2", chosen_score="high")], 1, "chosen_score must be a finite number"),
    ([_ranked("k1", "k2", rejected_score=True)], 1, "rejected_score must be a finite"),
    ([_ranked("k1", "k1")], 1, "the same item 'k1'"),
    ([_ranked("k1", "asked")], 1, "'k1' and 'asked' do not share their image and prompt"),
    ([_ranked("k1", "elsewhere")], 1, "do not share their image and prompt"),
    ([_ranked("k1", "k2", 0, 0)], 1, "score 0 is not above the rejected one's 0"),
    ([_ranked("k1", "k2"), _ranked("k2", "item0"), _ranked("k1", "k2", 1, 0)], 3,
     "the same pair as line 1"),
])
def test_bad_ranking_pairs_are_errors_naming_file_and_line(siblings, image_root, tmp_path,
                                                          rows, line, problem):
  pairs = _ranking_file(tmp_path / "pairs.jsonl", *rows)
  with pytest.raises(ValueError, match=f"pairs.jsonl line {line}: .*{problem}"):
    export_lib.export(siblings, image_root, tmp_path / "out", ranking_pairs=pairs)
  assert not (tmp_path / "out").exists()  # checked before anything is written
  with pytest.raises(ValueError, match=f"pairs.jsonl line {line}: .*{problem}"):
    cli.main(["export", "--store", str(siblings.path), "--out", str(tmp_path / "cli"),
              "--ranking_pairs", str(pairs)])


def test_a_ranking_pair_whose_image_is_missing_is_skipped_and_named(siblings, image_root,
                                                                   tmp_path):
  (image_root / "coco" / "1.png").unlink()
  pairs = _ranking_file(tmp_path / "pairs.jsonl", _ranked("k1", "k2"))
  report = export_lib.export(siblings, image_root, tmp_path / "out", ranking_pairs=pairs)
  assert report["pairs"] == 0
  assert [(s["item_id"], s["annotator"]) for s in report["skipped"]] == [("k1", "ai:l")]
  with pytest.raises(ValueError, match=r"k1>k2@ai:l.*pairs.jsonl line 1.*not found"):
    export_lib.export(siblings, image_root, tmp_path / "raise", ranking_pairs=pairs,
                      error_policy="raise")
