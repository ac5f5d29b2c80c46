"""The `export_hf` stage: a run's parameters → a llava-hf directory that transformers loads.

  python -m rlhfv_jax.main --config configs/llava15_feedback.py:export_hf --workdir DIR \\
      --config.init.checkpoint_dir=/runs/llava15_7b_ddpo \\
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model

Writes ``export_hf.out_dir`` (default ``<workdir>/hf``): ``config.json`` +
``model.safetensors`` (`hf_io.save_hf_llava`, the llava-hf tensor names) and the
processor that reproduces the project's inputs, so that a trained model can be served
elsewhere with ``LlavaForConditionalGeneration.from_pretrained`` and
``AutoProcessor.from_pretrained``:

* the tokenizer (``data.tokenizer``: a SentencePiece file, converted, or an HF directory)
  with ``<image>`` at the model's ``image_token_id``;
* LLaVA-1.5's image processing: pad to square with the CLIP-mean fill, resize, never
  crop (``LlavaImageProcessor`` with ``do_pad``; ``center_crop`` when
  ``data.image_resize_mode="center_crop"``), the image size of the model;
* the chat template: the data layer's single-turn prompt (``data.system_message`` and
  ``data.prompt_template``), so ``apply_chat_template`` renders what training saw.

A LoRA run (`rlhfv_jax.model.lora`) exports as plain weights (base + (alpha / r) B A
folded in) and, in ``<out_dir>/peft_adapter``, its adapters alone in the PEFT format
(`peft_io`) that ``peft.PeftModel.from_pretrained`` puts on the base model (if the run
also trained modules in full, ``model.lora.trained``, only the merged directory has
them).

Tested: transformers loads the directory, its processor gives the project's token ids
and pixels, its model the project's logits.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from typing import Any

import jax

from rlhfv_jax.data import factory
from rlhfv_jax.data.records import IMAGE_PLACEHOLDER
from rlhfv_jax.model import hf_io
from rlhfv_jax.model import lora
from rlhfv_jax.stages import model_init


def chat_template(system: str, prompt_template: str) -> str:
  """A transformers chat template rendering the data layer's prompt: the text parts of the
  user's message become ``question``, the system message is the run's."""
  return ("{%- set ns = namespace(question='') -%}"
          "{%- for message in messages if message['role'] == 'user' -%}"
          "{%- for part in message['content'] if part['type'] == 'text' -%}"
          "{%- set ns.question = ns.question + part['text'] -%}"
          "{%- endfor -%}{%- endfor -%}"
          f"{{%- set system = {json.dumps(system)} -%}}"
          "{%- set question = ns.question -%}" + prompt_template)


def _tokenizer(path: str, image_token_id: int):
  import transformers
  source = pathlib.Path(path)
  with tempfile.TemporaryDirectory() as tmp:
    if source.is_file():  # a SentencePiece model: transformers converts it
      shutil.copy(source, pathlib.Path(tmp) / "tokenizer.model")
      source = pathlib.Path(tmp)
    # LLaVA prompts start with BOS (the data layer adds it too); no EOS after a prompt.
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(source), local_files_only=True, add_bos_token=True, add_eos_token=False)
  if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
  if tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) != image_token_id:
    raise ValueError(f"{path}: <image> gets id {tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)}"
                     f", the model's image_token_id is {image_token_id}")
  if tokenizer.pad_token is None:  # as the data layer: pad with <unk> (id 0)
    tokenizer.pad_token = tokenizer.unk_token
  return tokenizer


def processor(config: Any):
  """The `LlavaProcessor` of a run config (module docstring)."""
  import transformers
  cfg = config.model
  facts = factory.ModelFacts.from_config(config)
  settings = factory.make_preprocessor(config, facts, augment=False).settings
  image_processor = transformers.LlavaImageProcessorPil(
      do_pad=settings["resize_mode"] == "pad", resample=settings["resample"],
      size={"shortest_edge": settings["image_size"]},
      crop_size={"height": settings["image_size"], "width": settings["image_size"]},
      image_mean=settings["image_mean"], image_std=settings["image_std"])
  default = cfg.vision.feature_select_strategy == "default"
  return transformers.LlavaProcessor(
      image_processor=image_processor, tokenizer=_tokenizer(config.data.tokenizer,
                                                            cfg.image_token_id),
      patch_size=cfg.vision.patch_size, vision_feature_select_strategy=(
          cfg.vision.feature_select_strategy), num_additional_image_tokens=1 if default else 0,
      chat_template=chat_template(config.data.system_message, config.data.prompt_template))


PEFT_DIR = "peft_adapter"


def run(config: Any, workdir: str) -> str:
  """The stage (module docstring). Returns the directory written."""
  out = pathlib.Path(config.export_hf.out_dir or pathlib.Path(workdir) / "hf")
  params = model_init.load_initial_params(config)
  model_cfg = lora.base_config(config.model)
  hf_io.save_hf_llava(model_cfg, params, out)
  if jax.process_index() == 0:
    processor(config).save_pretrained(str(out))
  pointer = (model_init.lora_pointer(config.init.checkpoint_dir)
             if config.init.params == "checkpoint" else None)
  if pointer is not None:  # a LoRA run: its adapters alone too, for peft
    from rlhfv_jax.model import peft_io  # local: safetensors
    # Only the adapters are read again: the merged weights above already hold the base.
    trained, settings = model_init.restore_lora_trained(config, pointer)
    adapters = lora.split(trained)[1]
    with_lora = model_cfg.copy_and_resolve_references()
    with_lora.lora = settings
    base_init = pointer["init"]
    peft_io.save_peft_adapter(with_lora, adapters, out / PEFT_DIR,
                              base_model_name_or_path=base_init.get("hf_checkpoint", ""))
  return str(out)
