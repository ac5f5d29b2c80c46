"""config.data -> loader and reference pass, wired to the tiny model config."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from raw_files import GOOD_ROWS, image_bytes
from rlhfv_jax import model
from rlhfv_jax.data import factory


@pytest.fixture
def config(make_jsonl_dir, tmp_path, sentencepiece_tokenizer_path):
  lines = [dict(id=f"j{i}", image=image_bytes(i), **GOOD_ROWS[i % 3]) for i in range(6)]
  lines.append(dict(id="bad", image=b"broken", **GOOD_ROWS[0]))
  data = factory.get_data_config()
  data.update(dataset="jsonl_preference", source_dir=str(make_jsonl_dir(lines)),
              data_dir=str(tmp_path / "tfds"), tokenizer=str(sentencepiece_tokenizer_path),
              buckets=(96, 128), error_policy="skip", num_threads=2)
  return ml_collections.ConfigDict(dict(
      data=data, model=model.llava_config("tiny"),
      ddpo=ml_collections.ConfigDict(dict(segment_mode="rlhfv"))))


def test_loader_from_config_builds_the_dataset_and_matches_the_model(config, tmp_path):
  run_dir = tmp_path / "run"
  loader = factory.make_loader(config, global_batch_size=2, run_dir=run_dir)
  assert len(loader.source) == 6  # the broken image was skipped and listed
  assert "bad" in (run_dir / "skipped_jsonl_preference_train.jsonl").read_text()
  assert loader.segment_mode == "rlhfv" and loader.min_match == 3
  batch = next(iter(loader))
  assert batch.pixel_values.shape == (2, 32, 32, 3)  # tiny model: 32px images
  image_id = config.model.image_token_id
  assert ((batch.chosen.input_ids == image_id).sum(1) == model.num_image_tokens(config.model)).all()


def test_augmentation_can_be_turned_off_for_evaluation(config, tmp_path):
  config.data.augmentation = "photometric"
  batch = lambda augment: next(iter(factory.make_loader(
      config, global_batch_size=2, run_dir=tmp_path, shuffle=False, augment=augment)))
  plain_preprocessor = factory.make_preprocessor(config, factory.ModelFacts.from_config(config),
                                                 augment=False)
  loader = factory.make_loader(config, global_batch_size=2, run_dir=tmp_path, shuffle=False)
  expected = np.stack([plain_preprocessor(loader.source[i].image) for i in range(2)])
  np.testing.assert_array_equal(batch(False).pixel_values, expected)
  assert not np.array_equal(batch(True).pixel_values, expected)


def test_reference_pass_then_cached_batches(config, tmp_path):
  run_dir = tmp_path / "run"
  fn = lambda b: tuple(np.full(s.input_ids.shape, -0.5, np.float32) for s in (b.chosen, b.rejected))
  path = factory.precompute_reference(config, fn, batch_size=4, run_dir=run_dir,
                                      metadata={"reference": "tiny"})
  assert path.parent == factory.ref_cache_dir(config)
  config.data.use_ref_cache = True
  batch = next(iter(factory.make_loader(config, global_batch_size=2, run_dir=run_dir)))
  for seq in (batch.chosen, batch.rejected):
    np.testing.assert_array_equal(seq.ref_token_logps, np.where(seq.loss_mask, -0.5, 0))
  # The cache saw padded images; center-cropped ones would not match it.
  config.data.image_resize_mode = "center_crop"
  with pytest.raises(ValueError, match="other image preprocessing: resize_mode='pad' then"):
    factory.make_loader(config, global_batch_size=2, run_dir=run_dir)


def test_config_errors(config, tmp_path):
  config.model.image_token_id = 7
  with pytest.raises(ValueError, match="<image> id is 32000 but the model's image_token_id is 7"):
    factory.make_loader(config, global_batch_size=2, run_dir=tmp_path)
  config.model.image_token_id = 32000
  config.data.augmentation = "random_crop"
  with pytest.raises(ValueError, match="random_crop_ablation"):
    factory.make_loader(config, global_batch_size=2, run_dir=tmp_path)
  config.data.augmentation = "none"
  assert factory.ModelFacts.from_config(config).vocab_size == config.model.text.vocab_size
  # A LLaVA-1.5 tokenizer has 32001 ids with <image>; a smaller model vocabulary is refused.
  with pytest.raises(ValueError, match="32001 ids but the model's embedding table has only "
                                       "text.vocab_size=1000"):
    factory.make_template(config, factory.ModelFacts(
        num_image_tokens=16, image_token_id=32000, image_size=32, vocab_size=1000))


def test_largest_bucket_must_fit_the_model_positions(config, tmp_path):
  config.model.text.max_position_embeddings = 128  # == the largest bucket: fine
  assert factory.ModelFacts.from_config(config).max_positions == 128
  factory.make_loader(config, global_batch_size=2, run_dir=tmp_path)
  config.model.text.max_position_embeddings = 100
  message = (r"largest data bucket, 128 tokens \(config.data.buckets=\(96, 128\)\), exceeds "
             r"the model's text.max_position_embeddings=100. Lower the largest bucket")
  with pytest.raises(ValueError, match=message):
    factory.make_loader(config, global_batch_size=2, run_dir=tmp_path)
  with pytest.raises(ValueError, match=message):
    factory.precompute_reference(config, lambda b: None, batch_size=2, run_dir=tmp_path)
