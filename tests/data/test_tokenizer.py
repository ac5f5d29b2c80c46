"""The LLaVA-1.5 chat template and tokenizers, against hand-written ids and transformers.

The tests about Llama-2's ids use the real tokenizer (`llama_tokenizer`); the others
the one trained in code (`tokenizer`).
"""

from __future__ import annotations

import shutil

import pytest

from rlhfv_jax.data.tokenizer import (PROMPT_TEMPLATE, VICUNA_V1_SYSTEM, ChatTemplate,
                                      HFTokenizer, load_tokenizer)

TEXTS = ["The cat is brown.", "héllo wörld  two  spaces", "日本 x", "\nWhat is it?"]


@pytest.fixture(scope="module")
def hf_tokenizer(llama_tokenizer_path, tmp_path_factory):
  directory = tmp_path_factory.mktemp("hf_tok")
  shutil.copy(llama_tokenizer_path, directory / "tokenizer.model")
  return HFTokenizer(directory)


def test_rendered_prompt_is_the_vicuna_v1_conversation(tokenizer):
  template = ChatTemplate(tokenizer, num_image_tokens=3)
  assert template.render_prompt("What is it?") == (
      "A chat between a curious human and an artificial intelligence assistant. The assistant "
      "gives helpful, detailed, and polite answers to the human's questions. USER: <image>\n"
      "What is it? ASSISTANT:")
  assert PROMPT_TEMPLATE.count("<image>") == 1 and VICUNA_V1_SYSTEM.startswith("A chat")


def test_prompt_ids_by_hand(llama_tokenizer):
  template = ChatTemplate(llama_tokenizer, num_image_tokens=3, system="Hi.")
  # "Hi. USER: " | <image> x3 | "\nWhat? ASSISTANT:"  (Llama-2 SentencePiece ids)
  assert template.encode_prompt("What?") == [
      1,                                   # <s>
      6324, 29889, 3148, 1001, 29901, 29871,  # ▁Hi . ▁US ER : ▁
      32000, 32000, 32000,                 # <image> x num_image_tokens
      29871, 13, 5618, 29973,              # ▁ \n What ?
      319, 1799, 9047, 13566, 29901]       # ▁A SS IST ANT :
  assert template.encode_answer("The cat.") == [450, 6635, 29889]


def test_prompt_plus_answer_equals_llava_hf_encoding_of_the_whole_text(llama_tokenizer,
                                                                       hf_tokenizer):
  """llava-hf tokenizes the whole conversation with <image> as a special token."""
  template = ChatTemplate(llama_tokenizer, num_image_tokens=1)
  for question, answer in [("What is on the table?", "A blue mug, next to a red book."),
                           ("Describe it.", "Two dogs (one brown) run; the sky is grey.")]:
    ours = template.encode_prompt(question) + template.encode_answer(answer)
    whole = template.render_prompt(question) + " " + answer
    assert ours == [llama_tokenizer.bos_id] + hf_tokenizer.encode(whole)


def test_hf_and_sentencepiece_backends_agree(llama_tokenizer, hf_tokenizer):
  tokenizer = llama_tokenizer
  assert (hf_tokenizer.bos_id, hf_tokenizer.eos_id, hf_tokenizer.image_token_id) == (1, 2, 32000)
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.image_token_id) == (1, 2, 32000)
  assert tokenizer.pad_id == hf_tokenizer.pad_id == 0  # Llama has no pad token
  for text in TEXTS:
    assert tokenizer.encode(text) == hf_tokenizer.encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == hf_tokenizer.decode(hf_tokenizer.encode(text))


def test_offsets_are_character_spans(llama_tokenizer, hf_tokenizer):
  tokenizer = llama_tokenizer
  text = "héllo wörld"
  ids, offsets = tokenizer.encode_with_offsets(text)
  assert ids == tokenizer.encode(text)
  # ▁h | él | lo | ▁w | ör | ld, in characters (SentencePiece reports bytes).
  assert offsets == [(0, 1), (1, 3), (3, 5), (5, 7), (7, 9), (9, 11)]
  hf_ids, hf_offsets = hf_tokenizer.encode_with_offsets(text)
  assert hf_ids == ids and [text[s:e].strip() for s, e in hf_offsets] == [
      text[s:e].strip() for s, e in offsets]


def test_load_tokenizer_dispatch_and_template_validation(sentencepiece_tokenizer_path, tmp_path,
                                                         tokenizer):
  assert load_tokenizer(sentencepiece_tokenizer_path).encode("a b") == tokenizer.encode("a b")
  with pytest.raises(FileNotFoundError, match="no tokenizer"):
    load_tokenizer(tmp_path / "missing")
  with pytest.raises(ValueError, match="exactly once"):
    ChatTemplate(tokenizer, 1, template="USER: {{ question }} ASSISTANT:")
  with pytest.raises(ValueError, match="num_image_tokens"):
    ChatTemplate(tokenizer, 0)


def test_the_tokenizer_trained_for_the_tests_has_the_llava_ids(tokenizer):
  """What lets the data tests run on it in place of Llama-2's: the same special ids and
  vocabulary size, and any text encodes (byte fallback) and decodes back."""
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 0)
  assert (tokenizer.image_token_id, tokenizer.vocab_size) == (32000, 32001)
  for text in TEXTS + [VICUNA_V1_SYSTEM]:
    ids = tokenizer.encode(text)
    assert 0 not in ids  # no <unk>
    assert tokenizer.decode(ids) == text
  assert len(tokenizer.encode("There is a blue mug on the wooden table.")) == 10  # words
