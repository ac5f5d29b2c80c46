"""A tiny Gemma 3 tokenizer and processor built in code (the real ones cannot be downloaded).

`train_gemma3_tokenizer` writes a SentencePiece model with Gemma's conventions and special
tokens; `write_processor_dir` turns it into a local HF directory (tokenizer.json,
tokenizer_config.json with Gemma 3's ``boi_token`` / ``eoi_token`` / ``image_token``,
preprocessor_config.json, processor_config.json, the chat template) that
``transformers.Gemma3Processor.from_pretrained`` loads, as it loads google/gemma-3-*-it.
Both take well under a second (transformers' import aside).
"""

from __future__ import annotations

import io
import json
import pathlib
import shutil
from typing import Sequence

# Gemma's order: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, then the markup. Runs of
# newlines are single pieces in Gemma's vocabulary (user-defined, so they never merge with
# letters), which is what makes "\n\n" merge with the newlines next to it.
MARKUP = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>")
IMAGE_TOKEN = "<image_soft_token>"
NEWLINE_RUNS = tuple("\n" * k for k in range(1, 7))

# What the pieces are learned from: the template's words, short image questions and
# answers, doubled spaces, a few accented and CJK characters (the rest falls back to bytes).
_TEXT = (
    "user\nmodel\nYou are a helpful assistant. Answer briefly.",
    "What is in the picture? Describe the image. What color is the car? How many are there?",
    "There is a blue mug on the wooden table. There is a red cup on the wooden table.",
    "A dog sleeps on a sofa next to a lamp.  Two  dogs  run in the park; the sky is grey.",
    "Yes, it is. No, it is not. yes no Yes No The cat is brown. The car is green.",
    "héllo wörld, café crème, naïve émigré. 日本の猫 x 日本",
)

# Gemma 3's chat template (google/gemma-3-4b-it): the system message is prepended to the
# first user turn, text items are trimmed, an image item is "<start_of_image>".
CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate "
    "user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n")


def train_gemma3_tokenizer(path: pathlib.Path, *, with_image_token: bool = False,
                           leave_out: Sequence[str] = ()) -> pathlib.Path:
  """Writes a tiny SentencePiece model with Gemma 3's conventions to `path`.

  Gemma's settings: BPE, ``<pad>``=0, ``<eos>``=1, ``<bos>``=2, ``<unk>``=3, byte
  fallback, split digits, no dummy prefix, text kept as written (no whitespace folding,
  whitespace-only pieces), the markup and newline runs as user-defined pieces. About 450
  pieces. As in the real ``tokenizer.model``, ``<image_soft_token>`` is not a piece (the
  HF tokenizer has it as an added token just past the pieces) unless `with_image_token`.
  Deterministic: one thread, no sampling of the input.

  Args:
    path: the ``.model`` file to write.
    with_image_token: make ``<image_soft_token>`` a piece too.
    leave_out: markup left out of the vocabulary (to test that it is refused).

  Returns:
    `path`.
  """
  import sentencepiece
  symbols = ["<mask>"] + [t for t in MARKUP if t not in leave_out]
  if with_image_token:
    symbols.append(IMAGE_TOKEN)
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(_TEXT * 3), model_writer=model, vocab_size=600,
      hard_vocab_limit=False, model_type="bpe", character_coverage=1.0, byte_fallback=True,
      split_digits=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True, normalization_rule_name="identity",
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
      bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=symbols + list(NEWLINE_RUNS),
      num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2)
  path.write_bytes(model.getvalue())
  return path


def write_processor_dir(model_path: pathlib.Path, directory: pathlib.Path, *,
                        image_size: int = 896, num_image_tokens: int = 256) -> pathlib.Path:
  """Writes a local Gemma 3 processor directory for the SentencePiece model `model_path`.

  The layout of google/gemma-3-*-it's: ``tokenizer.model`` and the ``tokenizer.json``
  transformers converts from it, with ``<image_soft_token>`` an added special token (id =
  the pieces' count when the model lacks it) and the ``boi_token`` / ``eoi_token`` /
  ``image_token`` attributes `Gemma3Processor` reads; ``preprocessor_config.json`` (Gemma
  3's: bilinear resize to `image_size`, mean = std = 0.5, no pan-and-scan); the processor
  config (`num_image_tokens` image tokens per image) and the chat template.

  Returns:
    `directory`.
  """
  import transformers
  directory.mkdir(parents=True, exist_ok=True)
  shutil.copy(model_path, directory / "tokenizer.model")
  # What google/gemma-3-*-it's tokenizer_config.json says about the tokens; transformers
  # converts tokenizer.model, and saving writes tokenizer.json and the config again.
  (directory / "tokenizer_config.json").write_text(json.dumps(dict(
      tokenizer_class="GemmaTokenizer", bos_token="<bos>", eos_token="<eos>",
      pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", add_bos_token=True,
      add_eos_token=False, boi_token="<start_of_image>", eoi_token="<end_of_image>",
      image_token=IMAGE_TOKEN, extra_special_tokens={
          "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
          "image_token": IMAGE_TOKEN})))
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
  image_processor = transformers.Gemma3ImageProcessorPil(
      size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
      image_std=[0.5] * 3, resample=2, do_pan_and_scan=False)
  processor = transformers.Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                           chat_template=CHAT_TEMPLATE,
                                           image_seq_length=num_image_tokens)
  processor.save_pretrained(str(directory))
  image_processor.save_pretrained(str(directory))  # preprocessor_config.json, as on the hub
  return directory


def load_processor(directory: pathlib.Path):
  """`transformers.Gemma3Processor` of a `write_processor_dir` directory."""
  import transformers
  return transformers.Gemma3Processor.from_pretrained(str(directory), local_files_only=True)
