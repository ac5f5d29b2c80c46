"""The `export_hf` stage: transformers loads the directory, and its processor and model give
the project's token ids, pixels and logits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import config_files
from rlhfv_jax import model as model_lib
from rlhfv_jax.data import factory
from rlhfv_jax.stages import export_hf, model_init


def test_transformers_loads_the_export_and_agrees(tmp_path, llama_tokenizer_path):
  torch = pytest.importorskip("torch")
  import transformers

  config = config_files.load("tiny_cpu.py", "export_hf")
  config.init.params = "random"  # the checkpoint path is model_init's (tested there)
  config.data.update(tokenizer=str(llama_tokenizer_path), system_message="A chat.")
  out = export_hf.run(config, str(tmp_path))
  processor = transformers.AutoProcessor.from_pretrained(out)
  hf_model = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()

  facts = factory.ModelFacts.from_config(config)
  template = factory.make_template(config, facts)
  preprocess = factory.make_preprocessor(config, facts, augment=False)
  question = "What is on the table?"
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                "text": question}]}]
  text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  assert text == template.render_prompt(question)
  buffer = io.BytesIO()  # not square: the padding must match too
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 52, 3), np.uint8)).save(
      buffer, "PNG")
  inputs = processor(text=text, images=Image.open(io.BytesIO(buffer.getvalue())),
                     return_tensors="pt")
  ours_ids = template.encode_prompt(question)
  assert inputs["input_ids"][0].tolist() == ours_ids
  ours_pixels = preprocess(buffer.getvalue())
  np.testing.assert_allclose(inputs["pixel_values"][0].numpy().transpose(1, 2, 0), ours_pixels,
                             atol=1e-6)

  params = model_init.load_initial_params(config)
  ids = np.asarray([ours_ids], np.int32)
  ours = model_lib.make_apply_fn(config.model)(params, ids, np.ones_like(ids, bool),
                                                ours_pixels[None])
  with torch.no_grad():
    theirs = hf_model(**inputs).logits.numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=2e-4, rtol=2e-4)
