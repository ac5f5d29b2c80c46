"""Reference log-prob cache: computed once, merged into batches at the right positions."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from raw_files import GOOD_ROWS, image_bytes
from rlhfv_jax.data.images import ImagePreprocessor
from rlhfv_jax.data.loader import Loader
from rlhfv_jax.data.records import make_preference_record
from rlhfv_jax.data.ref_cache import (ReferenceCache, compute_reference_cache,
                                      default_cache_dir, shard_path)
from rlhfv_jax.data.tokenizer import ChatTemplate


def bigram_logps(input_ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """A stand-in causal model: the log-prob of targets[t] depends on (input_ids[t], targets[t])."""
  return -((targets.astype(np.int64) * 31 + input_ids) % 997).astype(np.float32) / 100 - 0.01


def fake_reference(calls):
  def token_logps_fn(batch):
    calls.append(batch.chosen.input_ids.shape)
    return tuple(bigram_logps(np.asarray(s.input_ids), np.asarray(s.targets))
                 for s in (batch.chosen, batch.rejected))
  return token_logps_fn


@pytest.fixture(scope="module")
def template(tokenizer):
  return ChatTemplate(tokenizer, 4)


@pytest.fixture(scope="module")
def preprocessor():
  return ImagePreprocessor(16)


@pytest.fixture(scope="module")
def source():
  tail = " A small green plant stands near the window."
  return [make_preference_record(dict(GOOD_ROWS[i % 3], id=f"r{i}", image=image_bytes(i),
                                      chosen=GOOD_ROWS[i % 3]["chosen"] + tail * (i % 3)))
          for i in range(7)]


def build(source, template, preprocessor, cache_dir, calls, buckets=(256,), process_count=2):
  for p in range(process_count):
    compute_reference_cache(source, template, preprocessor, fake_reference(calls), cache_dir,
                            batch_size=3, buckets=buckets, process_index=p,
                            process_count=process_count, metadata={"reference": "sft-ckpt"})
  return ReferenceCache.load(cache_dir)


def test_cached_logps_merge_into_batches_aligned_with_targets(source, template, preprocessor,
                                                              tmp_path):
  calls = []
  cache = build(source, template, preprocessor, tmp_path / "cache", calls)
  assert len(cache) == 7 and cache.metadata["reference"] == "sft-ckpt"
  # Process 0 has indices 0, 2, 4, 6 (two calls, the second padded), process 1 has 1, 3, 5.
  assert calls == [(3, 256)] * 3
  # Training uses other buckets (so other padding); the cached values must still line up.
  loader = Loader(source, template, preprocessor, global_batch_size=2, buckets=(96, 128),
                  num_threads=2, ref_lookup=cache.lookup)
  iterator = iter(loader)
  for _ in range(5):
    batch = next(iterator)
    for seq in (batch.chosen, batch.rejected):
      expected = np.where(seq.loss_mask, bigram_logps(seq.input_ids, seq.targets), 0)
      np.testing.assert_array_equal(seq.ref_token_logps, expected)
      assert seq.ref_token_logps.dtype == np.float32


def test_missing_id_and_changed_tokenization_are_clear_errors(source, template, preprocessor,
                                                              tmp_path):
  cache = build(source[:4], template, preprocessor, tmp_path / "partial", [], process_count=1)
  with pytest.raises(KeyError, match="'r4' is missing from the reference cache"):
    next(iter(Loader(source, template, preprocessor, global_batch_size=7, buckets=(256,),
                     shuffle=False, num_threads=2, ref_lookup=cache.lookup)))
  # A smaller largest bucket truncates answers: the cached lengths no longer match.
  with pytest.raises(ValueError, match=r"example 'r\d' has \d+ cached log-probs .* scores \d+"):
    next(iter(Loader(source[:4], template, preprocessor, global_batch_size=4, buckets=(64,),
                     shuffle=False, num_threads=2, ref_lookup=cache.lookup)))


@pytest.mark.parametrize("change", ["system_message", "num_image_tokens", "answer_text"])
def test_cache_for_another_token_sequence_of_equal_length_is_refused(source, template,
                                                                    preprocessor, tmp_path,
                                                                    change):
  """Changes that keep every answer's scored length still invalidate the cached values."""
  cache = build(source[:2], template, preprocessor, tmp_path / "c", [], process_count=1)
  current_template, current_source = template, source[:2]
  if change == "system_message":
    current_template = ChatTemplate(template.tokenizer, 4, system="You describe images.")
  elif change == "num_image_tokens":
    current_template = ChatTemplate(template.tokenizer, 9)
  else:  # "blue" -> "green": one token for another, same length
    edited = dataclasses.replace(source[0], chosen=source[0].chosen.replace("blue", "green"))
    assert edited.chosen != source[0].chosen
    assert (len(template.encode_answer(edited.chosen))
            == len(template.encode_answer(source[0].chosen)))
    current_source = [edited, source[1]]
  loader = Loader(current_source, current_template, preprocessor, global_batch_size=2,
                  buckets=(256,), shuffle=False, num_threads=2, ref_lookup=cache.lookup)
  with pytest.raises(ValueError, match=r"example 'r0' \(\w+ answer\) was computed for a "
                                       "different token sequence"):
    next(iter(loader))


def test_incomplete_shards_and_bad_outputs_are_refused(source, template, preprocessor, tmp_path):
  cache_dir = default_cache_dir(tmp_path, "jsonl_preference", "train")
  assert cache_dir == tmp_path / "jsonl_preference" / "ref_logps" / "train-reference"
  compute_reference_cache(source, template, preprocessor, fake_reference([]), cache_dir,
                          batch_size=3, buckets=(256,), process_index=1, process_count=2)
  assert shard_path(cache_dir, 1, 2).is_file()
  with pytest.raises(ValueError, match="incomplete or mixed set of shards"):
    ReferenceCache.load(cache_dir)
  with pytest.raises(FileNotFoundError, match="precompute_ref"):
    ReferenceCache.load(tmp_path / "nothing")
  with pytest.raises(ValueError, match=r"expected \(3, 256\)"):
    compute_reference_cache(source, template, preprocessor,
                            lambda b: (np.zeros((3, 255)), np.zeros((3, 255))), tmp_path / "x",
                            batch_size=3, buckets=(256,))


def test_metadata_names_the_source_briefly_and_the_image_preprocessing(source, template,
                                                                       preprocessor, tmp_path):
  cache = build(source, template, preprocessor, tmp_path / "c", [], process_count=1)
  # A list of records is identified by type and length, not by its repr (image bytes).
  assert cache.metadata["source"] == {"type": "list", "length": 7}
  assert len(json.dumps(cache.metadata)) < 1000
  assert cache.metadata["image_preprocessing"] == preprocessor.settings
  assert preprocessor.settings["image_size"] == 16
  assert preprocessor.settings["resize_mode"] == "pad"


@pytest.mark.parametrize("other, changed", [
    (dict(image_size=16, resize_mode="center_crop"), "resize_mode='pad' then, 'center_crop' now"),
    (dict(image_size=24), "image_size=16 then, 24 now"),
])
def test_cache_from_other_image_preprocessing_is_refused(source, template, preprocessor,
                                                         tmp_path, other, changed):
  build(source[:2], template, preprocessor, tmp_path / "c", [], process_count=1)
  assert len(ReferenceCache.load(tmp_path / "c", preprocessor=ImagePreprocessor(16))) == 2
  with pytest.raises(ValueError, match=re.escape(changed) + ".*Rerun the precompute_ref stage"):
    ReferenceCache.load(tmp_path / "c", preprocessor=ImagePreprocessor(**other))
