"""The transformers processor that reproduces a run's inputs, for `export_hf`.

One builder per chat template (`tokenizer.TEMPLATES`), picked by the model family's
``chat_template`` name: ``vicuna_v1`` -> `LlavaProcessor`, ``gemma3`` -> `Gemma3Processor`.
Each holds

* the tokenizer (``data.tokenizer``: a SentencePiece file, converted, or an HF directory)
  with the image token at the model's ``image_token_id``;
* the run's image processing (`images.PROCESSINGS`: the processor class, size, mean /
  std; LLaVA-1.5 pads to a square and never crops, Gemma 3 resizes, no pan-and-scan);
* the chat template: the data layer's single-turn prompt (``data.system_message`` and
  ``data.prompt_template``, or the template's defaults), so ``apply_chat_template``
  renders what training saw, with the image where the processor expects it.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from typing import Any, Callable

from rlhfv_jax.data import factory
from rlhfv_jax.data.records import IMAGE_PLACEHOLDER
from rlhfv_jax.data.tokenizer import TemplateSpec, template_spec


def chat_template(system: str, prompt_template: str, image_text: str = IMAGE_PLACEHOLDER) -> str:
  """A transformers chat template rendering the data layer's prompt: the text parts of the
  user's message become ``question``, the system message is the run's, and ``<image>``
  becomes `image_text` (what the processor expands into the image tokens)."""
  return ("{%- set ns = namespace(question='') -%}"
          "{%- for message in messages if message['role'] == 'user' -%}"
          "{%- for part in message['content'] if part['type'] == 'text' -%}"
          "{%- set ns.question = ns.question + part['text'] -%}"
          "{%- endfor -%}{%- endfor -%}"
          f"{{%- set system = {json.dumps(system)} -%}}"
          "{%- set question = ns.question -%}"
          + prompt_template.replace(IMAGE_PLACEHOLDER, image_text)
          # transformers renders without keep_trailing_newline: an empty expression keeps
          # the prompt's own last newline (Gemma 3's "<start_of_turn>model\n").
          + "{{ '' }}")


def _tokenizer(path: str, spec: TemplateSpec, image_token_id: int, **kwargs: Any):
  """The HF tokenizer of ``data.tokenizer`` with the image token at `image_token_id`
  (`kwargs`: more `from_pretrained` arguments)."""
  import transformers
  source = pathlib.Path(path)
  with tempfile.TemporaryDirectory() as tmp:
    if source.is_file():  # a SentencePiece model: transformers converts it
      shutil.copy(source, pathlib.Path(tmp) / "tokenizer.model")
      source = pathlib.Path(tmp)
    # Prompts start with BOS (the data layer adds it too); no EOS after a prompt.
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(source), local_files_only=True, add_bos_token=True, add_eos_token=False, **kwargs)
  if spec.image_token not in tokenizer.get_vocab():
    tokenizer.add_special_tokens({"additional_special_tokens": [spec.image_token]})
  got = tokenizer.convert_tokens_to_ids(spec.image_token)
  if got != image_token_id:
    raise ValueError(f"{path}: {spec.image_token} gets id {got}, the model's image_token_id "
                     f"is {image_token_id}")
  if tokenizer.pad_token is None:  # as the data layer: pad with <unk> (id 0)
    tokenizer.pad_token = tokenizer.unk_token
  return tokenizer


def _settings(config: Any, facts: factory.ModelFacts) -> dict[str, Any]:
  """The run's (un-augmented) image preprocessing settings (`ImagePreprocessor.settings`)."""
  return factory.make_preprocessor(config, facts, augment=False).settings


def _llava_processor(config: Any, facts: factory.ModelFacts, spec: TemplateSpec):
  import transformers
  cfg = config.model
  settings = _settings(config, facts)
  # LlavaImageProcessor pads to a square itself (LLaVA-1.5's fill), as the data layer does.
  image_processor = transformers.LlavaImageProcessorPil(
      do_pad=settings["resize_mode"] == "pad", resample=settings["resample"],
      size={"shortest_edge": settings["image_size"]},
      crop_size={"height": settings["image_size"], "width": settings["image_size"]},
      image_mean=settings["image_mean"], image_std=settings["image_std"])
  default = cfg.vision.feature_select_strategy == "default"
  system, prompt = factory.template_texts(config, facts)
  return transformers.LlavaProcessor(
      image_processor=image_processor,
      tokenizer=_tokenizer(config.data.tokenizer, spec, cfg.image_token_id),
      patch_size=cfg.vision.patch_size,
      vision_feature_select_strategy=cfg.vision.feature_select_strategy,
      num_additional_image_tokens=1 if default else 0,
      chat_template=chat_template(system, prompt, spec.processor_image_text))


def _gemma3_processor(config: Any, facts: factory.ModelFacts, spec: TemplateSpec):
  import transformers
  settings = _settings(config, facts)
  if settings["resize_mode"] != "resize":
    raise ValueError(f"data.image_resize_mode={settings['resize_mode']!r}: Gemma3Processor "
                     "cannot pad to a square, so the export could not reproduce the run's "
                     "pixels; only 'resize' exports")
  image_processor = transformers.Gemma3ImageProcessorPil(
      size={"height": settings["image_size"], "width": settings["image_size"]},
      resample=settings["resample"], image_mean=settings["image_mean"],
      image_std=settings["image_std"], do_pan_and_scan=False)
  system, prompt = factory.template_texts(config, facts)
  # The tokens Gemma3Processor reads from its tokenizer (google/gemma-3-*-it's
  # tokenizer_config.json names them; a converted tokenizer.model does not).
  tokenizer = _tokenizer(config.data.tokenizer, spec, config.model.image_token_id,
                         extra_special_tokens={"boi_token": spec.image_prefix.strip(),
                                               "eoi_token": spec.image_suffix.strip(),
                                               "image_token": spec.image_token})
  return transformers.Gemma3Processor(
      image_processor=image_processor, tokenizer=tokenizer,
      image_seq_length=facts.num_image_tokens,
      chat_template=chat_template(system, prompt, spec.processor_image_text))


_BUILDERS: dict[str, Callable[..., Any]] = {
    "vicuna_v1": _llava_processor,
    "gemma3": _gemma3_processor,
}


def processor(config: Any):
  """The transformers processor of a run config (module docstring)."""
  facts = factory.ModelFacts.from_config(config)
  spec = template_spec(facts.chat_template)
  if spec.name not in _BUILDERS:
    raise ValueError(f"no transformers processor is defined for the chat template "
                     f"{spec.name!r}; defined: {', '.join(_BUILDERS)}")
  return _BUILDERS[spec.name](config, facts, spec)
