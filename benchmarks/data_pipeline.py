"""Input pipeline throughput at LLaVA-1.5 sizes (336px images, 576 image tokens).

  python -m benchmarks.data_pipeline [--examples 96] [--batch 8]

Prints examples/s of (a) a plain serial loop (tokenize + preprocess one example at a
time, the same work) and (b) the grain `Loader` (thread pool + background batch
prefetch), and their ratio. A 7B DDPO step on 8 accelerators takes seconds per batch
of 32, so the loader must not be the bottleneck at any realistic ratio.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from benchmarks import common
from rlhfv_jax.data.images import ImagePreprocessor
from rlhfv_jax.data.loader import Loader
from rlhfv_jax.data.packing import assemble_batch, choose_bucket, tokenize_record
from rlhfv_jax.data.records import make_preference_record
from rlhfv_jax.data.tokenizer import ChatTemplate, SentencePieceTokenizer

BUCKETS = (768, 1024)


def make_records(n: int):
  rng = np.random.default_rng(0)
  chosen = ("The image shows a kitchen with a white refrigerator, a wooden table and two "
            "chairs. A bowl of green apples sits on the counter near the window. ") * 3
  rejected = chosen.replace("green apples", "red oranges").replace("two chairs", "three chairs")
  records = []
  for i in range(n):
    pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # a COCO-sized photo
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    records.append(make_preference_record(dict(id=str(i), image=buffer.getvalue(),
                                               question="Describe the image in detail.",
                                               chosen=chosen, rejected=rejected)))
  return records


def serial(records, template, preprocessor, batch_size):
  tok = template.tokenizer
  for start in range(0, len(records) - batch_size + 1, batch_size):
    examples = [tokenize_record(r, template) for r in records[start:start + batch_size]]
    pixels = np.stack([preprocessor(e.image) for e in examples])
    length = choose_bucket(max(e.required_length() for e in examples), BUCKETS)
    assemble_batch(examples, pixels, length, eos_id=tok.eos_id, pad_id=tok.pad_id)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--examples", type=int, default=96)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--threads", type=int, default=4)
  args = parser.parse_args()
  records = make_records(args.examples)
  template = ChatTemplate(SentencePieceTokenizer(common.llama_tokenizer_path()), num_image_tokens=576)
  preprocessor = ImagePreprocessor(336)
  num_batches = args.examples // args.batch

  start = time.perf_counter()
  serial(records, template, preprocessor, args.batch)
  serial_rate = num_batches * args.batch / (time.perf_counter() - start)

  loader = Loader(records, template, preprocessor, global_batch_size=args.batch,
                  buckets=BUCKETS, num_epochs=1, num_threads=args.threads)
  start = time.perf_counter()
  count = sum(1 for _ in loader)
  loader_rate = count * args.batch / (time.perf_counter() - start)

  print(f"serial loop : {serial_rate:7.1f} examples/s")
  print(f"grain Loader: {loader_rate:7.1f} examples/s ({args.threads} threads)")
  print(f"ratio loader/serial: {loader_rate / serial_rate:.2f}x")


if __name__ == "__main__":
  main()
