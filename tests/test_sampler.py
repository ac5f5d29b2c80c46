"""Tests of the sampler: batched text generation with the project's KV-cache generate."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rlhfv_jax import model as model_lib
from rlhfv_jax.data import images as images_lib
from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax import sampler
from rlhfv_jax.demo import corpora, settings, vocabulary, world


def test_left_pad():
  ids, mask = sampler.left_pad([[5, 6, 7], [8]], pad_id=0, length=4)
  np.testing.assert_array_equal(ids, [[0, 5, 6, 7], [0, 0, 0, 8]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
  assert sampler.left_pad([[1, 2]], pad_id=9)[0].tolist() == [[1, 2]]
  with pytest.raises(ValueError, match="longer than the padded length"):
    sampler.left_pad([[1, 2, 3]], pad_id=0, length=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  path = vocabulary.make_tokenizer_file(tmp_path_factory.mktemp("t") / "t.model", "Chat.")
  tok = tokenizer_lib.SentencePieceTokenizer(path)
  cfg = settings.demo_model_config()
  cfg.text.vocab_size, cfg.image_token_id, cfg.pad_token_id = (
      tok.vocab_size, tok.image_token_id, tok.pad_id)
  template = tokenizer_lib.ChatTemplate(tok, model_lib.num_image_tokens(cfg), system="Chat.")
  params = model_lib.init_params(cfg, jax.random.key(0))
  pre = images_lib.ImagePreprocessor(cfg.vision.image_size)
  scenes = world.sample_scenes(0, 5, "s")
  pngs = [world.encode_png(world.render(s, cfg.vision.image_size)) for s in scenes]
  return cfg, template, params, pre, pngs


def _sample(cfg, template, pre, *args, **kwargs):
  samples = sampler.Sampler(cfg, template, pre)(*args, **kwargs)
  return samples.texts, samples.finished


def test_decode_response(setup):
  _, template, _, _, _ = setup
  tok = template.tokenizer
  ids = tok.encode("A red circle.")
  assert sampler.decode_response(template, ids + [tok.eos_id, 0, 0]) == ("A red circle.", True)
  assert sampler.decode_response(template, ids) == ("A red circle.", False)


def test_batching_does_not_change_greedy_outputs(setup):
  cfg, template, params, pre, pngs = setup
  prompts = [corpora.DESCRIPTION_PROMPTS[i % 3] for i in range(5)]  # different lengths
  # Every call below has the same batch size and longest prompt: one compilation.
  describe = lambda order: _sample(
      cfg, template, pre, params, [pngs[i] for i in order], [prompts[i] for i in order],
      batch_size=2, max_new_tokens=6)
  texts, done = describe([0, 1, 2, 3, 4])  # batches {0,1} {2,3} {4,+pad}
  assert len(texts) == len(done) == 5
  shuffled, shuffled_done = describe([4, 2, 0, 3, 1])  # batches {4,2} {0,3} {1,+pad}
  assert shuffled == [texts[i] for i in (4, 2, 0, 3, 1)]
  assert shuffled_done == [done[i] for i in (4, 2, 0, 3, 1)]
  longest = max(range(5), key=lambda i: len(template.encode_prompt(prompts[i])))
  assert describe([longest])[0] == [texts[longest]]  # a row alone, padded with itself


def test_argument_errors(setup):
  cfg, template, params, pre, pngs = setup
  with pytest.raises(ValueError, match="2 images but 1 prompts"):
    _sample(cfg, template, pre, params, pngs[:2], ["x"], max_new_tokens=2, batch_size=2)
  with pytest.raises(ValueError, match="needs an rng"):
    _sample(cfg, template, pre, params, pngs[:1], ["x"], max_new_tokens=2, batch_size=2,
            temperature=1.0)


def test_sampled_answers_do_not_depend_on_the_batches_before_them(setup):
  """Batch s draws from fold_in(rng, s): the same rows at the same start give the same
  samples whatever came before (so a resumed or sharded run samples the same)."""
  cfg, template, params, pre, pngs = setup
  prompts = [corpora.DESCRIPTION_PROMPTS[0]] * 4
  kwargs = dict(batch_size=2, max_new_tokens=6, temperature=1.0, rng=jax.random.key(3))
  texts, _ = _sample(cfg, template, pre, params, pngs[:4], prompts, **kwargs)
  other, _ = _sample(cfg, template, pre, params, pngs[1:2] + pngs[1:4], prompts, **kwargs)
  assert other[2:] == texts[2:]
  greedy, _ = _sample(cfg, template, pre, params, pngs[:4], prompts, batch_size=2,
                      max_new_tokens=6)
  assert texts != greedy  # it did sample
