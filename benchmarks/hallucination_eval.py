"""Answering benchmark items: the project's sampler vs. transformers' `generate`.

  python -m benchmarks.hallucination_eval [--items 32] [--max_new_tokens 24]

One small LLaVA-proportioned model (random weights), exported through the project's HF
export and loaded by transformers' PyTorch `LlavaForConditionalGeneration`, so both
answer with the same weights, prompts (the LLaVA-1.5 template, left-padded) and pixels.
Prints answered items/s and generated tokens/s of the sampler (greedy, KV cache) at batch
sizes 1..32, of transformers' greedy `generate` at batch 16, and the ratio at batch 16;
and checks that the two produce the same tokens. Needs the Llama-2 tokenizer
(RLHFV_LLAMA_TOKENIZER or ../shared/data) and torch (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from benchmarks import common
from rlhfv_jax import model as model_lib
from rlhfv_jax import sampler as sampler_lib
from rlhfv_jax.data.images import ImagePreprocessor
from rlhfv_jax.data.tokenizer import ChatTemplate, SentencePieceTokenizer
from rlhfv_jax.model import hf_io

QUESTIONS = ("Is there a dog in the image?", "Is there a red car in the image?",
             "Is there a person in the image?", "Is there a chair in the image?")


def small_config():
  """LLaVA-1.5's proportions, CPU-sized: 144 image tokens (96 px / 8 px patches)."""
  cfg = model_lib.llava_config("tiny")
  cfg.vision.update(image_size=96, patch_size=8, hidden_size=128, intermediate_size=256,
                    num_layers=2, num_heads=4)
  cfg.text.update(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8,
                  num_kv_heads=8, head_dim=32)
  return cfg


def images(n: int) -> list[bytes]:
  rng, out = np.random.default_rng(0), []
  for _ in range(n):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(buffer, "JPEG")
    out.append(buffer.getvalue())
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--items", type=int, default=32)
  parser.add_argument("--max_new_tokens", type=int, default=24)
  args = parser.parse_args()
  import torch
  import transformers

  cfg = small_config()
  params = model_lib.init_params(cfg, jax.random.key(0))
  template = ChatTemplate(SentencePieceTokenizer(common.llama_tokenizer_path()),
                          model_lib.num_image_tokens(cfg), system="A chat about an image.")
  sample = sampler_lib.Sampler(cfg, template, ImagePreprocessor(cfg.vision.image_size))
  pics = images(args.items)
  prompts = [QUESTIONS[i % len(QUESTIONS)] + "\nAnswer the question using a single word or "
             "phrase." for i in range(args.items)]
  tok = template.tokenizer

  def run_sampler(batch: int) -> tuple[float, list[str]]:
    kwargs = dict(max_new_tokens=args.max_new_tokens, batch_size=batch)
    sample(params, pics[:batch], prompts[:batch], **kwargs)  # compile
    start = time.perf_counter()
    out = sample(params, pics, prompts, **kwargs)
    return time.perf_counter() - start, out.texts

  print(f"model: CLIP {cfg.vision.num_layers}x{cfg.vision.hidden_size}, "
        f"{model_lib.num_image_tokens(cfg)} image tokens, Llama {cfg.text.num_layers}x"
        f"{cfg.text.hidden_size}; {args.items} items, {args.max_new_tokens} new tokens max")
  timings = {}
  for batch in (1, 2, 4, 8, 16, 32):
    seconds, texts = run_sampler(batch)
    timings[batch] = (seconds, texts)
    tokens = sum(len(tok.encode(t)) + 1 for t in texts)
    print(f"sampler  batch {batch:2d}: {args.items / seconds:7.2f} items/s, "
          f"{tokens / seconds:8.1f} tokens/s")

  with tempfile.TemporaryDirectory() as directory:
    hf_io.save_hf_llava(cfg, params, directory)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(
        directory, attn_implementation="sdpa").eval()
  rows = [template.encode_prompt(p) for p in prompts]
  batch = 16
  start, hf_texts = time.perf_counter(), []
  for first in range(0, args.items, batch):
    ids, mask = sampler_lib.left_pad(rows[first:first + batch], tok.pad_id)
    pixels = np.stack([sample.preprocessor(p) for p in pics[first:first + batch]])
    with torch.no_grad():
      out = hf.generate(input_ids=torch.from_numpy(ids).long(),
                        attention_mask=torch.from_numpy(mask).long(),
                        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)),
                        max_new_tokens=args.max_new_tokens, do_sample=False,
                        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    hf_texts += [sampler_lib.decode_response(template, row)[0]
                 for row in out[:, ids.shape[1]:].numpy()]
  hf_seconds = time.perf_counter() - start
  tokens = sum(len(tok.encode(t)) + 1 for t in hf_texts)
  print(f"transformers generate batch {batch}: {args.items / hf_seconds:7.2f} items/s, "
        f"{tokens / hf_seconds:8.1f} tokens/s")
  same = sum(a == b for a, b in zip(timings[batch][1], hf_texts))
  print(f"same answers: {same} / {args.items}")
  print(f"ratio sampler/transformers at batch {batch}: "
        f"{hf_seconds / timings[batch][0]:.2f}x")


if __name__ == "__main__":
  main()
