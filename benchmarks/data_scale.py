"""The data path at the real RLHF-V size: build, disk, memory, loading vs. what DDPO eats.

  python -m benchmarks.data_scale [--rows 5733] [--workdir DIR] [--examples 256]

1. Writes a parquet directory in the openbmb/RLHF-V-Dataset layout with `--rows` rows
   (default: the real 5,733) of 640x480 JPEGs (synthetic photos of a COCO photo's file
   size) and RLHF-V-length answers, in row groups, so making it needs little memory.
2. Builds it with `tfds_builders.prepare` in a child process and prints rows/s, bytes
   on disk and the child's peak RSS (past 256 MB of examples the build spills sorted
   runs to disk, so the peak must not grow with `--rows`).
3. Loads `--examples` examples through the training `Loader` at LLaVA-1.5 sizes (336 px,
   576 image tokens, buckets 768/1024/2048) and prints examples/s.
4. Prints how many pairs/s a DDPO step consumes (analytic: 6·params FLOPs per token for
   the policy's forward+backward, reference log-probs cached, at an assumed MFU) and the
   ratio, i.e. whether data loading can be the bottleneck.

Needs the Llama-2 tokenizer (RLHFV_LLAMA_TOKENIZER or ../shared/data).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import pathlib
import resource
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks import common

BUCKETS = (768, 1024, 2048)
ANSWER = ("The image shows a busy street with a red double-decker bus stopping next to a "
          "crowd of people waiting at the bus stop. A man in a dark coat holds an umbrella, "
          "and a woman beside him carries a shopping bag. Behind them there is a row of shops "
          "with large windows and colourful signs. ")


def photo(rng: np.random.Generator) -> bytes:
  """A 640x480 "photo" (low-frequency colour field + grain) as JPEG q90, ~180 KB."""
  coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC),
                     np.float32)
  image += rng.normal(0, 24, image.shape)  # ~180 KB, as a COCO photo
  buffer = io.BytesIO()
  Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
  return buffer.getvalue()


def write_parquet(directory: pathlib.Path, rows: int, rows_per_file: int = 1000) -> int:
  """The RLHF-V layout, in files of `rows_per_file` rows; returns the bytes written."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  for first in range(0, rows, rows_per_file):
    path = directory / f"train-{first // rows_per_file:05d}.parquet"
    with pq.ParquetWriter(path, pa.schema([("image", image_type), ("text", pa.string()),
                                           ("idx", pa.int64())])) as writer:
      for start in range(first, min(first + rows_per_file, rows), 64):
        ids = range(start, min(start + 64, first + rows_per_file, rows))
        texts = [json.dumps({"question": "Describe the image in detail.",
                             "chosen": ANSWER * 2,
                             "rejected": ANSWER.replace("red", "blue") * 2}) for _ in ids]
        writer.write_table(pa.table({
            "image": pa.array([{"bytes": photo(rng), "path": None} for _ in ids],
                              image_type),
            "text": pa.array(texts), "idx": pa.array(list(ids), pa.int64())}))
  return sum(p.stat().st_size for p in directory.glob("*.parquet"))


def _build(source: str, data_dir: str) -> None:
  from rlhfv_jax.data import tfds_builders
  tfds_builders.prepare("rlhfv_parquet", source_dir=source, data_dir=data_dir)


def build_in_child(source: pathlib.Path, data_dir: pathlib.Path) -> tuple[float, float]:
  """(seconds, peak RSS in GB) of building in a fresh process."""
  start = time.perf_counter()
  process = multiprocessing.get_context("spawn").Process(target=_build,
                                                         args=(str(source), str(data_dir)))
  process.start()
  process.join()
  if process.exitcode:
    raise SystemExit(f"build failed (exit code {process.exitcode})")
  peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return time.perf_counter() - start, peak_kb / 2 ** 20


def loader_rate(data_dir: pathlib.Path, examples: int, batch: int, threads: int) -> float:
  from rlhfv_jax.data import tfds_builders
  from rlhfv_jax.data.images import ImagePreprocessor
  from rlhfv_jax.data.loader import Loader
  from rlhfv_jax.data.tokenizer import ChatTemplate, SentencePieceTokenizer
  source = tfds_builders.open_split("rlhfv_parquet", data_dir, "train")
  template = ChatTemplate(SentencePieceTokenizer(common.llama_tokenizer_path()),
                          num_image_tokens=576)
  loader = Loader(source, template, ImagePreprocessor(336), global_batch_size=batch,
                  buckets=BUCKETS, num_epochs=None, num_threads=threads)
  iterator = iter(loader)
  next(iterator)  # warm-up: thread pool, first decode
  start = time.perf_counter()
  for _ in range(examples // batch):
    next(iterator)
  rate = examples // batch * batch / (time.perf_counter() - start)
  loader.close()
  return rate


def ddpo_pairs_per_second(params: float, tokens_per_pair: int, chips: int,
                          peak_flops: float, mfu: float) -> float:
  """Pairs/s of a DDPO step: the policy's forward + backward over both answers' rows
  (6 FLOPs per parameter per token), the reference read from the cache."""
  return chips * peak_flops * mfu / (6 * params * tokens_per_pair)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=5733)
  parser.add_argument("--workdir", type=str, default="")
  parser.add_argument("--examples", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--threads", type=int, default=4)
  parser.add_argument("--params", type=float, default=7.06e9, help="LLaVA-1.5-7B")
  parser.add_argument("--chips", type=int, default=8, help="accelerators per host")
  parser.add_argument("--peak_flops", type=float, default=312e12, help="A100 bf16")
  parser.add_argument("--mfu", type=float, default=0.4)
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="data_scale_"))
  source, data_dir = workdir / "parquet", workdir / "tfds"

  start = time.perf_counter()
  parquet_bytes = write_parquet(source, args.rows)
  print(f"parquet     : {args.rows} rows, {parquet_bytes / 1e9:.2f} GB "
        f"({time.perf_counter() - start:.0f} s to make)")
  seconds, peak_gb = build_in_child(source, data_dir)
  disk = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
  print(f"build       : {args.rows / seconds:7.1f} rows/s ({seconds:.0f} s), "
        f"{disk / 1e9:.2f} GB on disk, peak RSS {peak_gb:.2f} GB")
  rate = loader_rate(data_dir, args.examples, args.batch, args.threads)
  print(f"loader      : {rate:7.1f} examples/s (336 px, buckets {BUCKETS}, "
        f"{args.threads} threads, one host)")
  tokens = 2 * (576 + 64 + 200)  # both answers' rows: image tokens, prompt, answer
  need = ddpo_pairs_per_second(args.params, tokens, args.chips, args.peak_flops, args.mfu)
  print(f"DDPO step   : {need:7.1f} pairs/s consumed by {args.chips} chips of "
        f"{args.peak_flops / 1e12:.0f} TFLOP/s at {args.mfu:.0%} MFU "
        f"({args.params / 1e9:.2f}B params, {tokens} tokens per pair; analytic)")
  print(f"ratio loader/step: {rate / need:.2f}x "
        f"({'loading keeps up' if rate >= need else 'LOADING IS THE BOTTLENECK'})")


if __name__ == "__main__":
  main()
