"""The grain loader: determinism, exact resumption, per-process shards, buckets, skipping."""

from __future__ import annotations

import json
import pathlib
import subprocess
import logging
import sys
import types

import jax
import numpy as np
import pytest

from raw_files import GOOD_ROWS, image_bytes
from rlhfv_jax.data import tfds_builders
from rlhfv_jax.data.images import AugmentationPolicy, ImagePreprocessor
from rlhfv_jax.data.loader import Loader, ordered_batches
from rlhfv_jax.data.records import (ErrorLog, RecordError, make_preference_record,
                                    read_skipped)
from rlhfv_jax.data.tokenizer import ChatTemplate

NUM_IMAGE_TOKENS = 4
BUCKETS = (80, 96, 160)


def records(n: int, long_every: int = 0):
  """n preference records; every `long_every`-th has a ~60-token answer (needs bucket 160)."""
  out = []
  for i in range(n):
    fields = dict(GOOD_ROWS[i % 3])
    if long_every and i % long_every == long_every - 1:
      tail = " It sits near a window with white curtains and a small green plant." * 4
      fields = dict(fields, chosen=fields["chosen"] + tail, rejected=fields["rejected"] + tail)
    out.append(make_preference_record(dict(fields, id=f"r{i}", image=image_bytes(i, (20, 16)))))
  return out


@pytest.fixture(scope="module")
def template(tokenizer):
  return ChatTemplate(tokenizer, NUM_IMAGE_TOKENS)


@pytest.fixture(scope="module")
def preprocessor():
  return ImagePreprocessor(16, policy=AugmentationPolicy("photometric"))


def make_loader(source, template, preprocessor, **kwargs):
  kwargs = dict(dict(global_batch_size=4, buckets=BUCKETS, seed=0, num_threads=2), **kwargs)
  return Loader(source, template, preprocessor, **kwargs)


def take(iterator, k):
  return [next(iterator) for _ in range(k)]


def truncation_logs(caplog):
  return [r for r in caplog.records if "cut to the largest bucket" in r.getMessage()]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    jax.tree.map(np.testing.assert_array_equal, x, y)


def test_order_is_a_function_of_the_seed(template, preprocessor):
  source = records(12)
  ids = lambda seed: [i for ids, _ in take(iter(make_loader(
      source, template, preprocessor, seed=seed).dataset(with_ids=True)), 6) for i in ids]
  first = ids(0)
  assert first == ids(0)
  assert first != ids(1)
  # Each epoch is a permutation of the data, and epochs are shuffled differently.
  assert sorted(first[:12]) == sorted(first[12:]) == sorted(r.id for r in source)
  assert first[:12] != first[12:]


def test_restored_iterator_continues_with_exactly_the_same_batches(template, preprocessor):
  source = records(10, long_every=3)
  iterator = iter(make_loader(source, template, preprocessor))
  take(iterator, 3)
  state = iterator.get_state()
  json.dumps(state)  # small and serializable, for the checkpoint
  expected = take(iterator, 5)  # crosses the epoch boundary (10 examples, 4 per batch)
  resumed = iter(make_loader(source, template, preprocessor))  # a fresh loader and iterator
  resumed.set_state(state)
  assert_same_batches(take(resumed, 5), expected)


def test_process_shards_are_disjoint_and_rebuild_the_single_process_batch(template, preprocessor):
  source = records(12, long_every=5)
  single = take(iter(make_loader(source, template, preprocessor).dataset(with_ids=True)), 3)
  hosts = [take(iter(make_loader(source, template, preprocessor, process_index=p,
                                 process_count=2).dataset(with_ids=True)), 3)
           for p in range(2)]
  for k in range(3):
    (ids0, b0), (ids1, b1) = hosts[0][k], hosts[1][k]
    ids, batch = single[k]
    assert ids0 + ids1 == ids and not set(ids0) & set(ids1)
    assert b0.chosen.input_ids.shape == b1.chosen.input_ids.shape  # same bucket on both hosts
    jax.tree.map(lambda s, x, y: np.testing.assert_array_equal(s, np.concatenate([x, y])),
                 batch, b0, b1)
  # One epoch (12 examples = 3 global batches): the two shards cover the data exactly once.
  seen = [i for host in hosts for ids, _ in host for i in ids]
  assert sorted(seen) == sorted(r.id for r in source)


def test_batches_use_the_smallest_bucket_that_fits_their_longest_example(template, preprocessor,
                                                                         tokenizer):
  source = records(12, long_every=4)
  long_ids = {r.id for r in source if len(r.chosen) > 100}
  loader = make_loader(source, template, preprocessor, shuffle=False)
  for ids, batch in take(iter(loader.dataset(with_ids=True)), 3):
    length = batch.chosen.input_ids.shape[1]
    assert batch.rejected.input_ids.shape[1] == length
    needed = max(m.attention_mask.sum(1).max() for m in (batch.chosen, batch.rejected))
    assert length == min(b for b in BUCKETS if b >= needed)
    assert (length == 160) == bool(set(ids) & long_ids)
  assert not loader.truncated_ids  # every example fits a bucket
  assert loader.truncation_summary() is None


def test_long_answers_are_truncated_to_the_largest_bucket(template, preprocessor, tokenizer,
                                                          caplog):
  source = records(4, long_every=1)
  loader = make_loader(source, template, preprocessor, buckets=(80, 96), shuffle=False,
                       num_epochs=1)
  with caplog.at_level(logging.DEBUG):
    ids, batch = next(iter(loader.dataset(with_ids=True)))
    assert not truncation_logs(caplog)  # an expected cut: no warning per batch
    loader.close()
  # Nothing is cut silently: every cut example is counted, kept by id and summarized.
  assert loader.truncated_ids == {r.id for r in source}
  summary, listed = truncation_logs(caplog)
  assert summary.levelno == logging.INFO and summary.getMessage().startswith(
      "answers cut to the largest bucket (96 tokens, EOS dropped) for 4 of 4 examples "
      "packed (100.0%): 4 distinct ids (r0, r1, r2, r3)")
  assert listed.levelno == logging.DEBUG and "['r0', 'r1', 'r2', 'r3']" in listed.getMessage()
  assert batch.chosen.input_ids.shape == (4, 96)
  assert batch.chosen.attention_mask.all()  # full: cut to fit
  assert not (batch.chosen.input_ids == tokenizer.eos_id).any()  # the EOS was dropped
  record = source[0]
  kept = batch.chosen.targets[0][batch.chosen.loss_mask[0]].tolist()
  assert kept == tokenizer.encode(record.chosen)[:len(kept)]


def test_prompt_too_long_fails_fast_or_is_skipped_and_listed(template, preprocessor, tmp_path):
  source = records(9)
  long_question = make_preference_record(dict(GOOD_ROWS[0], id="too-long", image=image_bytes(0),
                                              question="Why? " * 80))
  source.insert(2, long_question)
  with pytest.raises(RecordError, match=r"record 'too-long' .*prompt of \d+ tokens"):
    take(iter(make_loader(source, template, preprocessor, shuffle=False)), 2)
  errors = ErrorLog("skip", tmp_path, name="pipeline")
  loader = make_loader(source, template, preprocessor, shuffle=False, num_epochs=2,
                       errors=errors)
  seen = [i for ids, _ in loader.dataset(with_ids=True) for i in ids]
  assert len(seen) == 16 and "too-long" not in seen  # 2 epochs x 9 usable, whole batches
  lines = (tmp_path / "skipped_pipeline.jsonl").read_text().splitlines()
  assert [json.loads(l)["id"] for l in lines] == ["too-long"]  # listed once, not per epoch


def test_processes_sharing_a_run_dir_each_list_skips_in_their_own_file(template, preprocessor,
                                                                       tmp_path):
  """Every process filters the whole global batch; none may write into another's file."""
  source = records(8)
  source.insert(3, make_preference_record(dict(GOOD_ROWS[0], id="too-long", image=image_bytes(0),
                                               question="Why? " * 80)))
  for p in range(2):
    errors = ErrorLog("skip", tmp_path, name="pipeline", process_index=p, process_count=2)
    loader = make_loader(source, template, preprocessor, shuffle=False, num_epochs=1,
                         errors=errors, process_index=p, process_count=2)
    assert len([i for ids, _ in loader.dataset(with_ids=True) for i in ids]) == 2 * 2
    assert errors.skipped_ids == ["too-long"]
  files = sorted(path.name for path in tmp_path.glob("skipped_*"))
  assert files == ["skipped_pipeline.process0-of-2.jsonl", "skipped_pipeline.process1-of-2.jsonl"]
  for name in files:
    assert [json.loads(l)["id"] for l in (tmp_path / name).read_text().splitlines()] == [
        "too-long"]
  assert [e["id"] for e in read_skipped(tmp_path, "pipeline")] == ["too-long"]  # merged once
  with pytest.raises(ValueError, match=r"process_index=2 not in \[0, 2\)"):
    ErrorLog("skip", tmp_path, process_index=2, process_count=2)


def test_examples_left_over_by_a_finite_run_are_listed_and_logged(template, preprocessor,
                                                                  caplog):
  source = records(10)
  loader = make_loader(source, template, preprocessor, shuffle=False, num_epochs=1)
  with caplog.at_level(logging.WARNING):
    served = [i for ids, _ in loader.dataset(with_ids=True) for i in ids]
  assert served == [f"r{i}" for i in range(8)]
  assert loader.dropped_ids == ("r8", "r9")  # every example is served or listed
  assert any("last 2 examples (['r8', 'r9'])" in r.message for r in caplog.records)
  # Epochs run on into each other: 3 x 10 = 30 examples leave only 2 over, at the end.
  loader = make_loader(source, template, preprocessor, num_epochs=3)
  served = [i for ids, _ in loader.dataset(with_ids=True) for i in ids]
  assert len(served) == 28 and len(loader.dropped_ids) == 2
  assert sorted(served + list(loader.dropped_ids)) == sorted(3 * [r.id for r in source])
  loader = make_loader(source, template, preprocessor, num_epochs=2)
  assert len([b for b in loader.dataset()]) == 5 and loader.dropped_ids == ()


def test_loader_over_a_tfds_source_matches_the_in_memory_records(make_jsonl_dir, tmp_path,
                                                                 template, preprocessor):
  source = records(8)
  lines = [dict(id=r.id, image=r.image, question=r.question, chosen=r.chosen,
                rejected=r.rejected) for r in source]
  tfds_builders.prepare("jsonl_preference", source_dir=make_jsonl_dir(lines),
                        data_dir=tmp_path / "tfds")
  tfds_source = tfds_builders.open_split("jsonl_preference", tmp_path / "tfds", "train")
  assert_same_batches(take(iter(make_loader(tfds_source, template, preprocessor)), 3),
                      take(iter(make_loader(source, template, preprocessor)), 3))
  assert "tensorflow" not in sys.modules


def test_constructor_rejects_bad_layouts(template, preprocessor):
  with pytest.raises(ValueError, match="not divisible by 3 processes"):
    make_loader(records(4), template, preprocessor, process_count=3)
  with pytest.raises(ValueError, match="process_index"):
    make_loader(records(4), template, preprocessor, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="empty data source"):
    make_loader([], template, preprocessor)


def test_truncation_is_one_summary_with_count_and_share_and_every_id_kept(template,
                                                                          preprocessor, caplog):
  loader = make_loader(records(4), template, preprocessor, buckets=(80, 96), shuffle=False)
  example = lambda i, needed: types.SimpleNamespace(id=f"e{i}",
                                                    required_length=lambda shared_prefix: needed)
  cut = [example(i, 500) for i in range(300)]
  fits = [example(300 + i, 90) for i in range(700)]
  with caplog.at_level(logging.DEBUG):
    for k in range(0, 300, 3):  # host batches of 3 cut and 7 whole examples
      loader._note_truncated(cut[k:k + 3] + fits[7 * k // 3:7 * (k + 3) // 3], 96)
    loader._note_truncated(cut[:5], 96)  # a second epoch: counted again, not a new id
    assert not truncation_logs(caplog)  # nothing per batch, however many are cut
    loader.close()
    loader.close()  # once per loader
  assert loader.truncated_ids == {e.id for e in cut}
  summary, listed = truncation_logs(caplog)
  assert summary.levelno == logging.INFO and summary.getMessage() == (
      "answers cut to the largest bucket (96 tokens, EOS dropped) for 305 of 1005 examples "
      "packed (30.3%): 300 distinct ids (e0, e1, e2, e3, e4, ...), all in "
      "Loader.truncated_ids and at DEBUG")
  assert listed.levelno == logging.DEBUG
  assert all(f"'{e.id}'" in listed.getMessage() for e in cut)
  # Each process counts its own share and says which process it is.
  shard = make_loader(records(4), template, preprocessor, buckets=(80, 96), process_index=1,
                      process_count=2)
  shard._note_truncated(cut[:1] + fits[:1], 96)
  assert "for 1 of 2 examples packed on process 1 of 2 (50.0%)" in shard.truncation_summary()
  shard.close()


@pytest.mark.slow
def test_closed_iterators_stop_and_a_process_exits_clean(template, preprocessor,
                                                         sentencepiece_tokenizer_path):
  loader = make_loader(records(8), template, preprocessor)
  iterator = iter(loader)
  next(iterator)
  loader.close()
  with pytest.raises(RuntimeError, match="closed"):
    next(iterator)
  # At interpreter exit an iterator still open is closed before module teardown (else
  # grain's prefetch thread fails there with "'NoneType' object has no attribute 'Empty'").
  script = f"""
import sys
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
from raw_files import image_bytes
from rlhfv_jax.data import images, records
from rlhfv_jax.data.loader import Loader, ordered_batches
from rlhfv_jax.data.tokenizer import ChatTemplate, SentencePieceTokenizer
recs = [records.PreferenceRecord(f"r{{i}}", image_bytes(i), "Q?", "A red cup.", "A blue cup.")
        for i in range(16)]
template = ChatTemplate(SentencePieceTokenizer({str(sentencepiece_tokenizer_path)!r}), 1)
loader = Loader(recs, template, images.ImagePreprocessor(16), global_batch_size=4,
                buckets=(96,), num_epochs=None)
iterator = iter(loader)
next(iterator), next(iterator)
print("iterated")
"""
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=300, cwd=pathlib.Path(__file__).parents[2])
  assert proc.returncode == 0 and "iterated" in proc.stdout, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr[-2000:]


def test_ordered_batches_serve_every_example_and_summarize_the_cut_ones(template, preprocessor,
                                                                        caplog):
  """The forward-only passes (reference cache, evaluation): every example once, in order,
  the padded tail invalid; answers cut to the largest bucket are counted over the real
  rows only and summarized once, when the iteration ends."""
  source = records(5, long_every=2)  # r1 and r3 need the 160 bucket
  with caplog.at_level(logging.DEBUG):
    served = list(ordered_batches(source, template, preprocessor, indices=range(5),
                                  batch_size=4, buckets=(80, 96)))
  assert [e.id for _, chunk in served for e in chunk.items[:chunk.num_valid]] == [
      f"r{i}" for i in range(5)]
  assert [chunk.num_valid for _, chunk in served] == [4, 1]
  summary, listed = truncation_logs(caplog)
  assert summary.levelno == logging.INFO and summary.getMessage() == (
      "answers cut to the largest bucket (96 tokens, EOS dropped) for 2 of 5 examples "
      "packed (40.0%): 2 distinct ids (r1, r3), all at DEBUG")
  assert listed.levelno == logging.DEBUG and "['r1', 'r3']" in listed.getMessage()
  caplog.clear()
  with caplog.at_level(logging.DEBUG):
    list(ordered_batches(source, template, preprocessor, indices=range(5), batch_size=4,
                         buckets=(80, 96, 160)))
  assert not truncation_logs(caplog)  # nothing cut: nothing said
