"""The `export_hf` stage: a run's parameters → an HF directory that transformers loads.

  python -m rlhfv_jax.main --config configs/llava15_feedback.py:export_hf --workdir DIR \\
      --config.init.checkpoint_dir=/runs/llava15_7b_ddpo \\
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model

(or configs/gemma3_feedback.py:export_hf). Writes ``export_hf.out_dir`` (default
``<workdir>/hf``): ``config.json`` + ``model.safetensors`` (`hf_io.save_hf`, the family's
tensor names) and the processor that reproduces the project's inputs
(`rlhfv_jax.data.hf_processors`: tokenizer, image processing, chat template), so that a
trained model can be served elsewhere with the family's transformers class
(``LlavaForConditionalGeneration`` / ``Gemma3ForConditionalGeneration``)
``.from_pretrained`` and ``AutoProcessor.from_pretrained``.

A LoRA run (`rlhfv_jax.model.lora`) exports as plain weights (base + (alpha / r) B A
folded in) and, in ``<out_dir>/peft_adapter``, its adapters alone in the PEFT format
(`peft_io`) that ``peft.PeftModel.from_pretrained`` puts on the base model (if the run
also trained modules in full, ``model.lora.trained``, only the merged directory has
them).

Tested: transformers loads the directory, its processor gives the project's token ids
and pixels, its model the project's logits.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax

from rlhfv_jax.data import hf_processors
from rlhfv_jax.model import hf_io
from rlhfv_jax.model import lora
from rlhfv_jax.stages import model_init


PEFT_DIR = "peft_adapter"


def run(config: Any, workdir: str) -> str:
  """The stage (module docstring). Returns the directory written."""
  out = pathlib.Path(config.export_hf.out_dir or pathlib.Path(workdir) / "hf")
  params = model_init.load_initial_params(config)
  model_cfg = lora.base_config(config.model)
  hf_io.save_hf(model_cfg, params, out)
  if jax.process_index() == 0:
    hf_processors.processor(config).save_pretrained(str(out))
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
