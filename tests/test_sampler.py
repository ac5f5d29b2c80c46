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


def _direct_choice_probabilities(cfg, template, pre, params, pngs, prompts, choices):
  """Each (image, prompt) alone and unpadded through the model's forward: softmax of the
  last position's logits, summed over each choice's ids."""
  apply = jax.jit(model_lib.make_apply_fn(cfg, skip_prompt_logits=False))
  out = {name: [] for name in choices}
  for png, prompt in zip(pngs, prompts):
    ids = np.array([template.encode_prompt(prompt)], np.int32)
    logits = apply(params, ids, np.ones_like(ids, bool), pre(png)[None])
    probs = np.asarray(jax.nn.softmax(logits[0, -1].astype(np.float32)))
    for name, token_ids in choices.items():
      out[name].append(probs[list(token_ids)].sum())
  return {name: np.array(v, np.float32) for name, v in out.items()}


@pytest.mark.parametrize("sharded", [False, True])
def test_choice_probabilities_equal_the_models_next_token_distribution(setup, sharded):
  cfg, template, params, pre, pngs = setup
  prompts = [corpora.DESCRIPTION_PROMPTS[i % 3] for i in range(5)]  # different lengths
  assert len({len(template.encode_prompt(p)) for p in prompts}) > 1
  vocab = cfg.text.vocab_size
  choices = {"a": [5, 9, 11], "b": [7], "everything": list(range(vocab))}
  sample = sampler.Sampler(cfg, template, pre)
  if sharded:  # the batch split over 2 devices, params replicated on them
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:2]), ("data",))
    sample.batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    params = jax.device_put(params,
                            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  # batch_size 2: batches {0,1} {2,3} {4,+pad}; prompt_multiple adds left padding.
  got = sample.choice_probabilities(params, pngs, prompts, choices=choices, batch_size=2,
                                    prompt_multiple=16)
  want = _direct_choice_probabilities(cfg, template, pre, params, pngs, prompts, choices)
  assert set(got) == set(choices)
  for name in choices:
    assert got[name].dtype == np.float32 and got[name].shape == (5,)
    np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0)
  assert np.all(got["a"] + got["b"] <= 1.0)
  np.testing.assert_allclose(got["everything"], 1.0, atol=1e-5)


def test_choice_probabilities_argument_errors(setup):
  cfg, template, params, pre, pngs = setup
  sample = sampler.Sampler(cfg, template, pre)
  with pytest.raises(ValueError, match="2 images but 1 prompts"):
    sample.choice_probabilities(params, pngs[:2], ["x"], choices={"a": [1]}, batch_size=2)
  for bad in ([], [cfg.text.vocab_size]):
    with pytest.raises(ValueError, match="choice 'a': token ids"):
      sample.choice_probabilities(params, pngs[:1], ["x"], choices={"a": bad}, batch_size=2)


def test_choice_token_ids_on_the_llava_tokenizer(llama_tokenizer_path):
  import sentencepiece
  tok = tokenizer_lib.SentencePieceTokenizer(llama_tokenizer_path)
  sp = sentencepiece.SentencePieceProcessor(model_file=str(llama_tokenizer_path))
  for words in (["yes", "Yes"], ["no", "No"]):
    ids = tokenizer_lib.choice_token_ids(tok, words)
    pieces = {sp.id_to_piece(i) for i in ids}
    assert pieces == {form for w in words for form in (w, "▁" + w)}, pieces
    assert len(ids) == len(set(ids))
    # The first token of an answer "Yes, ..." as the template encodes it after the prompt.
    template = tokenizer_lib.ChatTemplate(tok, num_image_tokens=4)
    assert template.encode_answer(f"{words[1]}, there is.")[0] in ids


def test_choice_token_ids_error_names_the_tokenizer_and_word(sentencepiece_tokenizer_path):
  tok = tokenizer_lib.SentencePieceTokenizer(sentencepiece_tokenizer_path)
  assert tokenizer_lib.choice_token_ids(tok, ["cat"])  # a learned word is found
  with pytest.raises(ValueError) as error:
    tokenizer_lib.choice_token_ids(tok, ["cat", "yes"])
  assert str(error.value) == (
      f"the labeler's tokenizer {sentencepiece_tokenizer_path} has no single token for 'yes'; "
      "a labeler must answer yes/no in one token")
