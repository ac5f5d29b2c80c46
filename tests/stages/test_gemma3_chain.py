"""The Gemma 3 recipes as a user runs them: every stage through the family registry.

Subprocesses of `python -m rlhfv_jax.main` with configs/gemma3_*.py on a tiny Gemma 3
checkpoint directory laid out like google/gemma-3-*-it (a random
`Gemma3ForConditionalGeneration` saved by transformers, beside the tokenizer and processor
files of a SentencePiece model with Gemma's special tokens built in code), an RLHF-V
parquet, no `--config.model.*` override beside `logits_chunk`:

  DDPO with LoRA (log-probs in vocabulary chunks) -> hallucination_eval of that run (POPE)
  -> export_hf of that run -> transformers' Gemma3Processor and
  Gemma3ForConditionalGeneration load the export: its token ids, pixels and logits are
  the run's.
"""

from __future__ import annotations

import io
import json
import pathlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from rlhfv_jax import model as model_lib
from rlhfv_jax.stages import defaults, model_init

import gemma3_files
import test_stage_chain as chain

pytestmark = pytest.mark.slow

IMAGE_SIZE, NUM_IMAGE_TOKENS = 56, 4  # 4 x 4 SigLIP patches of 14 px, pooled 2 x 2


def _gemma3_checkpoint(directory: pathlib.Path) -> pathlib.Path:
  """A random tiny Gemma 3 checkpoint with its tokenizer and processor, as on the hub."""
  torch = pytest.importorskip("torch")
  import transformers
  spm = gemma3_files.train_gemma3_tokenizer(directory.parent / "gemma.model")
  gemma3_files.write_processor_dir(spm, directory, image_size=IMAGE_SIZE,
                                   num_image_tokens=NUM_IMAGE_TOKENS)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
  ids = {t: tokenizer.convert_tokens_to_ids(t)
         for t in ("<image_soft_token>", "<start_of_image>", "<end_of_image>")}
  text = transformers.Gemma3TextConfig(
      vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=2, head_dim=12, sliding_window=6,
      layer_types=["sliding_attention", "sliding_attention", "full_attention"],
      max_position_embeddings=4096, pad_token_id=0, bos_token_id=2, eos_token_id=[1, 106])
  vision = transformers.SiglipVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      image_size=IMAGE_SIZE, patch_size=14, vision_use_head=False)
  config = transformers.Gemma3Config(
      text_config=text, vision_config=vision, mm_tokens_per_image=NUM_IMAGE_TOKENS,
      image_token_index=ids["<image_soft_token>"], boi_token_index=ids["<start_of_image>"],
      eoi_token_index=ids["<end_of_image>"])
  torch.manual_seed(0)
  model = transformers.Gemma3ForConditionalGeneration(config)
  with torch.no_grad():  # O(1) weights, so that logits are informative
    for name, param in model.named_parameters():
      param.normal_(0.0, 0.1)
  model.save_pretrained(directory)
  return directory


def test_gemma3_stages_start_from_the_previous_runs_workdir(tmp_path, user_env):
  torch = pytest.importorskip("torch")
  import transformers

  hf = _gemma3_checkpoint(tmp_path / "gemma-3-tiny-it")
  data = [f"--config.data.tokenizer={hf}",
          f"--config.data.source_dir={chain._rlhfv_parquet(tmp_path / 'RLHF-V-Dataset')}",
          f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.num_threads=1",
          "--config.data.buckets=(64,128)"]

  # 1. DDPO with LoRA from the HF directory; the LM head runs 16 tokens at a time.
  ddpo = tmp_path / "ddpo"
  chain._main(user_env, "configs/gemma3_ddpo.py:lora", ddpo, f"--config.init.hf_checkpoint={hf}",
              *data, "--config.model.logits_chunk=16", "--config.train.global_batch_size=4",
              "--config.train.num_steps=3", "--config.optim.learning_rate=1e-2",
              "--config.optim.warmup_fraction=0.0", "--config.checkpoint.every_steps=3",
              "--config.checkpoint.async_save=False")
  run_model = json.loads((ddpo / "config.json").read_text())["model"]
  assert run_model["family"] == "gemma3" and run_model["logits_chunk"] == 16
  from_hf = json.loads(json.dumps(model_lib.config_from_hf(hf).to_dict()))  # tuples as lists
  assert chain._architecture(ddpo) == {k: v for k, v in from_hf.items()
                                       if k not in model_init.RUN_SETTINGS}
  metrics = [json.loads(line) for line in (ddpo / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)

  # 2. POPE of that run: Gemma 3's turns, generation stops at <end_of_turn>.
  pope_dir, coco = chain._pope(tmp_path / "bench")
  bench = tmp_path / "halbench"
  chain._main(user_env, "configs/gemma3_hallucination_eval.py", bench,
              "--config.init.params=checkpoint", f"--config.init.checkpoint_dir={ddpo}",
              f"--config.data.tokenizer={hf}", "--config.hallucination.benchmarks=('pope',)",
              f"--config.hallucination.pope_dir={pope_dir}",
              "--config.hallucination.pope_splits=('random',)",
              f"--config.hallucination.coco_images={coco}",
              "--config.hallucination.batch_size=4",
              "--config.hallucination.max_new_tokens.pope=3")
  assert len((bench / "pope_answers.jsonl").read_text().splitlines()) == 3
  assert chain._architecture(bench) == chain._architecture(ddpo)

  # 3. The run as a Gemma 3 HF directory, with no size given.
  export = tmp_path / "export"
  chain._main(user_env, "configs/gemma3_feedback.py:export_hf", export,
              f"--config.init.checkpoint_dir={ddpo}", f"--config.data.tokenizer={hf}")

  # transformers loads the export: its processor gives the project's inputs, its model
  # the run's logits (the LoRA run's bf16 base + folded adapters, computed in f32 on both
  # sides).
  run = defaults.base_config("export_hf", "tiny", "gemma3")
  run.model = ml_collections.ConfigDict(run_model)
  # As the export loads it: the f32 base with the adapters folded in, computed in f32.
  run.model.update(dtype="float32", param_dtype="float32", remat=False)
  run.init.update(params="checkpoint", checkpoint_dir=str(ddpo))
  params = model_init.load_initial_params(run)
  hf_model = transformers.Gemma3ForConditionalGeneration.from_pretrained(
      export / "hf", dtype=torch.float32).eval()
  processor = transformers.AutoProcessor.from_pretrained(export / "hf")
  assert type(processor).__name__ == "Gemma3Processor"
  messages = [{"role": "user", "content": [{"type": "image"},
                                           {"type": "text", "text": chain.ROWS[0][0]}]}]
  text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  image = Image.open(io.BytesIO(chain._jpeg(0)))
  inputs = processor(text=text + chain.ROWS[0][1], images=image, return_tensors="pt")
  ids = inputs["input_ids"].numpy().astype(np.int32)

  from rlhfv_jax.data import factory  # the project's own prompt for the same question
  run.data.tokenizer = str(hf)
  facts = factory.ModelFacts.from_config(run)
  template = factory.make_template(run, facts)
  ours_ids = (template.encode_prompt(chain.ROWS[0][0])
              + template.encode_answer(chain.ROWS[0][1]))
  assert ids[0].tolist() == ours_ids
  pixels = inputs["pixel_values"].numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(
      factory.make_preprocessor(run, facts, augment=False)(chain._jpeg(0)), pixels[0],
      atol=1e-6)
  ours = model_lib.make_apply_fn(run.model, skip_prompt_logits=False)(
      params, ids, np.ones_like(ids, bool), pixels)
  with torch.no_grad():
    theirs = hf_model(**inputs).logits.numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=2e-4, rtol=2e-4)
  # The export holds the trained params, not the checkpoint DDPO started from.
  start = transformers.Gemma3ForConditionalGeneration.from_pretrained(
      hf, dtype=torch.float32).eval()
  with torch.no_grad():
    assert not np.allclose(start(**inputs).logits.numpy(), theirs, atol=1e-3)
