"""The Gemma 3 chat template and tokenizers against transformers' `Gemma3Processor`.

The tokenizer and processor are built in code (`gemma3_files`: Gemma's conventions and
special tokens, a tiny vocabulary); both backends (the SentencePiece file and the HF
directory made from it) are checked against the processor loaded from that directory.
"""

from __future__ import annotations

import io
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

import gemma3_files
from rlhfv_jax.data import factory
from rlhfv_jax.data.records import PreferenceRecord
from rlhfv_jax.data.tokenizer import (GEMMA3_PROMPT_TEMPLATE, PROMPT_TEMPLATE, TEMPLATES,
                                      VICUNA_V1_SYSTEM, ChatTemplate, HFTokenizer,
                                      SentencePieceTokenizer, choice_token_ids, load_tokenizer,
                                      make_chat_template)

NUM_IMAGE_TOKENS = 256  # Gemma 3's; the template takes it from the model facts
SYSTEMS = ["", "You are a helpful assistant.", "Answer briefly.\n"]
# Trimmed by HF's template (so by ours); inner newlines, doubled spaces and unicode kept.
QUESTIONS = ["What is in the picture?", "  What color is the car?  ",
             "\nDescribe the image.\n\n", "How many  are there?\nCount them.",
             "日本の猫 x? héllo wörld"]
ANSWERS = ["There is a blue mug on the wooden table.", "Yes", "No, it is not. 日本",
           "Two  dogs run;\n\nthe sky is grey.", "héllo: 42 cats"]


@pytest.fixture(scope="session")
def gemma_model_path(tmp_path_factory):
  return gemma3_files.train_gemma3_tokenizer(
      tmp_path_factory.mktemp("gemma3_sp") / "tokenizer.model")


@pytest.fixture(scope="session")
def gemma_dir(gemma_model_path, tmp_path_factory):
  return gemma3_files.write_processor_dir(gemma_model_path, tmp_path_factory.mktemp("gemma3_hf"),
                                          num_image_tokens=NUM_IMAGE_TOKENS)


@pytest.fixture(scope="session")
def processor(gemma_dir):
  return gemma3_files.load_processor(gemma_dir)


@pytest.fixture(scope="session")
def sp_tokenizer(gemma_model_path):
  return SentencePieceTokenizer(gemma_model_path, template="gemma3")


@pytest.fixture(scope="session")
def hf_tokenizer(gemma_dir):
  return HFTokenizer(gemma_dir, template="gemma3")


@pytest.fixture(params=["sentencepiece", "hf"])
def tok(request, sp_tokenizer, hf_tokenizer):
  """Each backend in turn."""
  return sp_tokenizer if request.param == "sentencepiece" else hf_tokenizer


@pytest.fixture(scope="module")
def image():
  return Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), np.uint8))


def messages(system: str, question: str, answer: str | None = None, image=None) -> list[dict]:
  """A conversation as HF's chat templates take it: the user turn is [image, text]."""
  out = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
  picture = {"type": "image"} if image is None else {"type": "image", "image": image}
  out.append({"role": "user", "content": [picture, {"type": "text", "text": question}]})
  if answer is not None:
    out.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
  return out


def processor_ids(processor, image, text: str) -> list[int]:
  return [int(i) for i in processor(text=text, images=[image], add_special_tokens=False,
                                    return_tensors="np")["input_ids"][0]]


def test_the_template_registry():
  assert set(TEMPLATES) == {"vicuna_v1", "gemma3"}
  gemma, vicuna = TEMPLATES["gemma3"], TEMPLATES["vicuna_v1"]
  assert (gemma.system, gemma.prompt_template) == ("", GEMMA3_PROMPT_TEMPLATE)
  assert (vicuna.system, vicuna.prompt_template) == (VICUNA_V1_SYSTEM, PROMPT_TEMPLATE)
  assert (gemma.image_token, gemma.eos_token) == ("<image_soft_token>", "<end_of_turn>")
  with pytest.raises(ValueError, match="chat template 'chatml' is not defined; defined: "
                                       "vicuna_v1, gemma3"):
    make_chat_template("chatml", None, 1)


def test_the_tokenizer_ids(tok, processor):
  """Gemma's ids; <image_soft_token> is appended past the SentencePiece pieces, as in the
  real tokenizer (262144) and in the HF directory; EOS is <end_of_turn>."""
  hf = processor.tokenizer
  assert (tok.bos_id, tok.pad_id) == (2, 0) == (hf.bos_token_id, hf.pad_token_id)
  assert tok.eos_id == hf.convert_tokens_to_ids("<end_of_turn>") != hf.eos_token_id
  assert tok.image_token_id == hf.image_token_id == 600 and tok.vocab_size == len(hf) == 601


@pytest.mark.parametrize("system", SYSTEMS)
def test_rendered_prompt_is_hfs_chat_template(sp_tokenizer, processor, system):
  template = make_chat_template("gemma3", sp_tokenizer, NUM_IMAGE_TOKENS, system=system)
  for question in QUESTIONS:
    hf_text = processor.apply_chat_template(messages(system, question),
                                            add_generation_prompt=True, tokenize=False)
    ours = template.render_prompt(question).replace("<image>", template.spec.processor_image_text)
    assert "<bos>" + ours == hf_text
  assert make_chat_template("gemma3", sp_tokenizer, 1).render_prompt("Q?") == (
      "<start_of_turn>user\n<image>Q?<end_of_turn>\n<start_of_turn>model\n")


@pytest.mark.parametrize("system", SYSTEMS)
def test_prompt_and_answer_ids_equal_the_gemma3_processors(tok, processor, image, system):
  template = make_chat_template("gemma3", tok, NUM_IMAGE_TOKENS, system=system)
  newline = processor.tokenizer.convert_tokens_to_ids("\n")
  for question in QUESTIONS:
    prompt = template.encode_prompt(question)
    generation = messages(system, question, image=image)
    hf_prompt = processor.apply_chat_template(generation, add_generation_prompt=True,
                                              tokenize=True, return_dict=True)
    assert prompt == list(hf_prompt["input_ids"][0])
    text = processor.apply_chat_template(generation, add_generation_prompt=True, tokenize=False)
    assert prompt == processor_ids(processor, image, text)
    assert prompt.count(tok.image_token_id) == NUM_IMAGE_TOKENS
    for answer in ANSWERS:
      whole = processor_ids(processor, image, processor.apply_chat_template(
          messages(system, question, answer), tokenize=False))
      # HF's template writes "\n" after <end_of_turn>; the pipeline ends the row at the EOS.
      assert whole[-1] == newline
      assert prompt + template.encode_answer(answer) + [tok.eos_id] == whole[:-1]


def test_the_number_of_image_tokens_comes_from_the_model_facts(tok, processor, gemma_dir,
                                                               tmp_path, image):
  small = gemma3_files.write_processor_dir(gemma_dir / "tokenizer.model", tmp_path / "p",
                                           num_image_tokens=16)
  text = processor.apply_chat_template(messages("", "What is it?"), add_generation_prompt=True,
                                       tokenize=False)
  ids = make_chat_template("gemma3", tok, 16).encode_prompt("What is it?")
  assert ids == processor_ids(gemma3_files.load_processor(small), image, text)
  start = ids.index(tok.image_token_id)
  assert ids[start - 1:start + 17] == (
      [tok.encode("<start_of_image>")[0]] + [tok.image_token_id] * 16
      + [tok.encode("<end_of_image>")[0]])


def test_newlines_merge_across_the_image_markup(tok):
  """"\\n\\n" of the image markup merges with the system message's newlines: encoding it
  apart, as LLaVA's template encodes the text beside the image, would give other ids."""
  template = make_chat_template("gemma3", tok, 2, system="Answer briefly.\n")
  before = "<start_of_turn>user\nAnswer briefly.\n\n\n"
  merged = tok.encode(before + "\n\n<start_of_image>")
  assert template.encode_prompt("Q")[1:len(merged) + 1] == merged
  assert merged != tok.encode(before) + tok.encode("\n\n<start_of_image>")


@pytest.mark.parametrize("system", SYSTEMS)
def test_prompt_plus_answer_equals_encoding_the_whole_conversation(tok, processor, system):
  """The answer encoded on its own concatenates to the ids of the whole text."""
  template = make_chat_template("gemma3", tok, NUM_IMAGE_TOKENS, system=system)
  expanded = "\n\n<start_of_image>" + "<image_soft_token>" * NUM_IMAGE_TOKENS + (
      "<end_of_image>\n\n")
  for question in QUESTIONS:
    for answer in ANSWERS:
      ours = template.encode_prompt(question) + template.encode_answer(answer)
      whole = template.render_prompt(question).replace("<image>", expanded) + answer
      assert ours == [tok.bos_id] + tok.encode(whole)
      assert ours == [tok.bos_id] + processor.tokenizer(whole, add_special_tokens=False).input_ids


def test_backends_agree_and_decode_drops_special_tokens(sp_tokenizer, hf_tokenizer):
  template = make_chat_template("gemma3", sp_tokenizer, 4, system="Be brief.")
  ids = template.encode_prompt("What is it?") + template.encode_answer("A cat.") + [
      sp_tokenizer.eos_id]
  # Markup, image tokens, BOS and EOS are dropped; the text between them stays (the
  # newlines after the system message, before and after the image).
  assert sp_tokenizer.decode(ids) == hf_tokenizer.decode(ids) == (
      "user\nBe brief.\n\n" "\n\n" "\n\nWhat is it?\nmodel\nA cat.")
  for text in QUESTIONS + ANSWERS + ["<start_of_turn>user\nHi<end_of_turn>\n"]:
    ids = sp_tokenizer.encode(text)
    assert ids == hf_tokenizer.encode(text)
    assert 3 not in ids  # no <unk>: byte fallback
    if "<" not in text:
      assert sp_tokenizer.decode(ids) == hf_tokenizer.decode(ids) == text


def test_offsets_are_character_spans(tok):
  text = "héllo wörld\n\n<end_of_turn> 日本"
  ids, offsets = tok.encode_with_offsets(text)
  assert ids == tok.encode(text)
  assert "".join(text[s:e] for s, e in offsets) == text  # no dummy prefix: spans tile it
  assert text[slice(*offsets[ids.index(tok.eos_id)])] == "<end_of_turn>"
  answer = "Two  dogs run."
  template = make_chat_template("gemma3", tok, 1)
  assert template.encode_answer_with_offsets(answer) == tok.encode_with_offsets(answer)


def test_choice_token_ids(sp_tokenizer, hf_tokenizer):
  """An answer after "model\\n" starts with the bare word (no dummy prefix)."""
  template = make_chat_template("gemma3", sp_tokenizer, 1)
  first = template.encode_answer("Yes, it is.")[0]
  ids = choice_token_ids(sp_tokenizer, ["Yes", "No"])
  assert first in ids and ids == choice_token_ids(hf_tokenizer, ["Yes", "No"])
  # The bare word and the word after a space ("▁Yes": no dummy prefix drops that space).
  assert [sp_tokenizer.decode([i]) for i in ids] == ["Yes", " Yes", "No", " No"]
  with pytest.raises(ValueError, match="no single token for 'Perhaps'"):
    choice_token_ids(sp_tokenizer, ["Perhaps"])


def test_a_tokenizer_without_gemmas_markup_is_refused_at_load(tmp_path):
  path = gemma3_files.train_gemma3_tokenizer(tmp_path / "tokenizer.model",
                                             leave_out=("<start_of_turn>", "<end_of_image>"))
  message = (f"the tokenizer at '{path}' has no <start_of_turn>, <end_of_image>: the 'gemma3' "
             "chat template needs them as single tokens")
  with pytest.raises(ValueError, match=re.escape(message)):
    load_tokenizer(path, template="gemma3")
  directory = tmp_path / "hf"
  directory.mkdir()
  (directory / "tokenizer.model").write_bytes(path.read_bytes())
  (directory / "tokenizer_config.json").write_text('{"tokenizer_class": "GemmaTokenizer"}')
  with pytest.raises(ValueError, match=re.escape(f"the tokenizer at '{directory}' has no "
                                                 "<start_of_turn>, <end_of_image>")):
    load_tokenizer(directory, template="gemma3")
  # Through the factory: refused when a run builds its data, before any step.
  config = ml_collections.ConfigDict(dict(data=factory.get_data_config()))
  config.data.tokenizer = str(path)
  with pytest.raises(ValueError, match="has no <start_of_turn>, <end_of_image>"):
    factory.make_template(config, gemma_facts())


def test_image_token_as_a_piece_is_used_in_place(tmp_path):
  path = gemma3_files.train_gemma3_tokenizer(tmp_path / "t.model", with_image_token=True)
  tok = SentencePieceTokenizer(path, template="gemma3")
  assert tok.image_token_id < tok.vocab_size == 600
  assert tok.encode("<image_soft_token>") == [tok.image_token_id]
  assert tok.decode([tok.image_token_id, 2]) == ""


def test_markup_in_the_text_is_refused(sp_tokenizer, tokenizer):
  template = make_chat_template("gemma3", sp_tokenizer, 4)
  with pytest.raises(ValueError, match="question contains <image_soft_token>, markup of the "
                                       "'gemma3' chat template"):
    template.encode_prompt("What is <image_soft_token>?")
  with pytest.raises(ValueError, match="answer contains <end_of_turn>"):
    template.encode_answer("A cat.<end_of_turn>")
  with pytest.raises(ValueError, match="answer contains <start_of_image>"):
    template.encode_answer_with_offsets("<start_of_image>")
  with pytest.raises(ValueError, match="system message contains <image>"):
    make_chat_template("gemma3", sp_tokenizer, 4, system="See <image>.")
  with pytest.raises(ValueError, match="question contains <image>, markup of the 'vicuna_v1'"):
    ChatTemplate(tokenizer, 4).encode_prompt("<image> again?")


def test_template_and_tokenizer_must_be_for_the_same_template(sp_tokenizer, tokenizer):
  with pytest.raises(ValueError, match="loaded for the 'vicuna_v1' chat template, not 'gemma3'"):
    make_chat_template("gemma3", tokenizer, 4)
  with pytest.raises(ValueError, match="loaded for the 'gemma3' chat template, not 'vicuna_v1'"):
    ChatTemplate(sp_tokenizer, 4)


def gemma_facts(**kwargs) -> factory.ModelFacts:
  return factory.ModelFacts(**dict(dict(
      num_image_tokens=8, image_token_id=600, image_size=32, vocab_size=640,
      chat_template="gemma3", image_processing="siglip"), **kwargs))


def png(seed: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 30, 3), np.uint8)).save(
      buffer, "PNG")
  return buffer.getvalue()


def test_the_data_pipeline_builds_gemma3_rows(gemma_model_path, sp_tokenizer, tmp_path):
  """Through the factory, as training builds its data: the family's template, tokenizer and
  processing by name, the config's defaults resolved to the template's."""
  from rlhfv_jax import model
  data = factory.get_data_config()
  data.update(tokenizer=str(gemma_model_path), buckets=(96, 128), num_threads=1)
  ids = {t: sp_tokenizer.encode(t)[0] for t in ("<start_of_image>", "<end_of_image>")}
  config = ml_collections.ConfigDict(dict(data=data, model=model.gemma3_config(
      "tiny", vocab_size=640, image_token_id=600, boi_token_id=ids["<start_of_image>"],
      eoi_token_id=ids["<end_of_image>"], eos_token_id=sp_tokenizer.eos_id)))
  facts = factory.ModelFacts.from_config(config)
  assert facts == gemma_facts(num_image_tokens=4, max_positions=2048)
  template = factory.make_template(config, facts)
  assert (template.name, template.system, template.prompt_template) == (
      "gemma3", "", GEMMA3_PROMPT_TEMPLATE)
  assert factory.template_texts(config, facts) == ("", GEMMA3_PROMPT_TEMPLATE)
  preprocessor = factory.make_preprocessor(config, facts)
  assert (preprocessor.processing, preprocessor.resize_mode) == ("siglip", "resize")
  records = [PreferenceRecord(id=f"r{i}", image=png(i), question="What is on the table?",
                              chosen="A blue mug.", rejected="A red cup on the wooden table.")
             for i in range(2)]
  loader = factory.make_loader(config, global_batch_size=2, run_dir=tmp_path, facts=facts,
                               source=records, shuffle=False, num_epochs=1)
  batch = next(iter(loader))
  loader.close()
  tok = template.tokenizer
  seq = batch.chosen
  assert batch.pixel_values.shape == (2, 32, 32, 3)
  assert ((seq.input_ids == 600).sum(1) == 4).all()
  row = list(seq.input_ids[0][seq.attention_mask[0]])
  prompt = template.encode_prompt("What is on the table?")
  assert row[:len(prompt)] == prompt
  chosen = template.encode_answer("A blue mug.")
  assert row[len(prompt):len(prompt) + len(chosen) + 1] == chosen + [tok.eos_id]
  # Scored targets start after the image tokens (the model skips logits before them).
  assert np.flatnonzero(seq.loss_mask[0])[0] == len(prompt) - 1 > facts.num_image_tokens
  # A system message set in the config is used; a wrong image id is named by its token.
  config.data.system_message = "Be brief."
  assert factory.make_template(config, facts).render_prompt("Q").startswith(
      "<start_of_turn>user\nBe brief.\n\n<image>Q")
  with pytest.raises(ValueError, match="the tokenizer's <image_soft_token> id is 600 but the "
                                       "model's image_token_id is 7"):
    factory.make_template(config, gemma_facts(image_token_id=7))


def test_llava_configs_keep_the_vicuna_template_and_clip(sentencepiece_tokenizer_path):
  from rlhfv_jax import model
  data = factory.get_data_config()
  data.tokenizer = str(sentencepiece_tokenizer_path)
  config = ml_collections.ConfigDict(dict(data=data, model=model.llava_config("tiny")))
  del config.model["family"]  # configs written before the family registry
  facts = factory.ModelFacts.from_config(config)
  assert (facts.chat_template, facts.image_processing) == ("vicuna_v1", "clip")
  template = factory.make_template(config, facts)
  assert (template.system, template.prompt_template) == (VICUNA_V1_SYSTEM, PROMPT_TEMPLATE)
  assert factory.make_preprocessor(config, facts).settings["resize_mode"] == "pad"
