"""Tests of the demo's in-code SentencePiece tokenizer."""

from __future__ import annotations

import pytest

from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax.demo import corpora, vocabulary, world

SYSTEM = "A chat about an image."


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  return vocabulary.make_tokenizer_file(tmp_path_factory.mktemp("tok") / "demo.model", SYSTEM)


def test_training_is_deterministic(model_path, tmp_path):
  again = vocabulary.make_tokenizer_file(tmp_path / "again.model", SYSTEM)
  assert again.read_bytes() == model_path.read_bytes()


def test_project_tokenizer_round_trips_every_demo_text(model_path):
  tok = tokenizer_lib.SentencePieceTokenizer(model_path)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
  assert tok.image_token_id == tok.vocab_size - 1 <= vocabulary.DEFAULT_VOCAB_SIZE
  # Fresh scenes (another seed than the tokenizer's own text), up to 6 objects.
  scenes = world.sample_scenes(99, 300, "fresh", max_objects=6)
  texts = [c.response for c in corpora.web_captions(scenes, 5, mismatch_rate=0.5)]
  texts += [p.prompt for p in corpora.vqa_pairs(scenes, 5)] + list(corpora.DESCRIPTION_PROMPTS)
  assert vocabulary.unknown_pieces(model_path, texts) == []
  for text in texts:
    assert tok.decode(tok.encode(text)) == text
  # Closed-vocabulary words are single pieces (short sequences for the tiny model).
  for word in ("circle", "triangle", "yellow", "large", "bottom"):
    assert len(tok.encode(word)) == 1, word
  template = tokenizer_lib.ChatTemplate(tok, num_image_tokens=9, system=SYSTEM)
  prompt = template.encode_prompt(corpora.DESCRIPTION_PROMPTS[0])
  assert prompt.count(tok.image_token_id) == 9 and 0 not in prompt


def test_out_of_world_text_is_reported(model_path):
  assert vocabulary.unknown_pieces(model_path, ["a red circle", "ein Kreis über €"]) == [
      "ein Kreis über €"]


def test_empty_corpus_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="no text"):
    vocabulary.train_sentencepiece(["", "  "], tmp_path / "x.model")
