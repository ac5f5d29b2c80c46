"""DDPO loss+grad time: shared image encoding vs. encoding the image for each answer.

`ddpo.make_ddpo_loss` runs chosen and rejected answers as one batch of 2B sequences
that share one vision-tower pass per image (`sequences_per_image=2`). Anchors such as
TRL's DPO trainer encode each image once per answer. This prints the wall time of both
(policy forward+backward and the frozen reference forward) and their ratio.

  python -m benchmarks.ddpo_step                  # small CPU-sized model
  python -m benchmarks.ddpo_step --size 7b --batch 8 --dtype bfloat16   # on an accelerator
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhfv_jax import ddpo, model
from rlhfv_jax.batch import PreferenceBatch, TokenSequences


def synthetic_batch(cfg, batch: int, answer_len: int, seed: int = 0) -> PreferenceBatch:
  rng = np.random.default_rng(seed)
  n_img = model.num_image_tokens(cfg)
  length = 1 + n_img + 8 + answer_len

  def sequences():
    ids = rng.integers(3, min(cfg.text.vocab_size, cfg.image_token_id), size=(batch, length))
    ids[:, 0] = cfg.bos_token_id
    ids[:, 1:1 + n_img] = cfg.image_token_id
    targets = np.concatenate([ids[:, 1:], np.zeros((batch, 1), ids.dtype)], axis=1)
    positions = np.arange(length)[None]
    loss_mask = np.broadcast_to(positions >= length - answer_len - 1, (batch, length)).copy()
    loss_mask[:, -1] = False
    return TokenSequences(
        input_ids=jnp.asarray(ids, jnp.int32), attention_mask=jnp.ones((batch, length), bool),
        targets=jnp.asarray(targets, jnp.int32), loss_mask=jnp.asarray(loss_mask),
        corrected_mask=jnp.asarray(loss_mask & (rng.random((batch, length)) < 0.2)))

  size = cfg.vision.image_size
  pixels = rng.normal(size=(batch, size, size, cfg.vision.num_channels)).astype(np.float32)
  return PreferenceBatch(pixel_values=jnp.asarray(pixels), chosen=sequences(), rejected=sequences())


def encode_per_answer(apply_fn):
  """The anchor: the image is re-encoded for each sequence that uses it."""
  def apply_twice(params, input_ids, attention_mask, pixel_values, sequences_per_image=1):
    pixels = jnp.concatenate([pixel_values] * sequences_per_image, axis=0)
    return apply_fn(params, input_ids, attention_mask, pixels, sequences_per_image=1)
  return apply_twice


def median_seconds(call: Callable[[], Any], repeats: int) -> float:
  """Median wall time of `call()` over `repeats` calls, after one untimed call (the
  compile); each call is timed until its result is ready."""
  jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="bench", help="'bench' (CPU-sized), 'tiny', '7b', '13b'")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--answer_len", type=int, default=64)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  if args.size == "bench":
    # A CPU-sized model whose vision tower is a realistic share of the compute.
    cfg = model.llava_config("tiny", vocab_size=4096)
    cfg.vision.update(image_size=96, patch_size=8, hidden_size=128, intermediate_size=512,
                      num_layers=6, num_heads=4)
    cfg.text.update(hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
                    num_kv_heads=4, head_dim=32)
  else:
    cfg = model.llava_config(args.size)
  cfg.dtype = args.dtype
  model.validate_config(cfg)

  params = model.init_params(cfg, jax.random.key(0))
  ref_params = jax.tree.map(jnp.copy, params)
  batch = synthetic_batch(cfg, args.batch, args.answer_len)
  apply_fn = model.make_apply_fn(cfg)

  results = {}
  for name, fn in (("shared image encoding", apply_fn),
                   ("image encoded per answer", encode_per_answer(apply_fn))):
    loss_fn = ddpo.make_ddpo_loss(fn, ddpo.PAPER_HPARAMS)
    step = jax.jit(jax.value_and_grad(lambda p, r, b: loss_fn(p, r, b)[0]))
    results[name] = median_seconds(lambda: step(params, ref_params, batch), args.repeats)

  print(f"device: {jax.devices()[0].device_kind}  size={args.size} batch={args.batch} "
        f"image tokens={model.num_image_tokens(cfg)} answer_len={args.answer_len}")
  for name, seconds in results.items():
    print(f"  {name:26s} {seconds * 1e3:9.1f} ms / loss+grad")
  ratio = results["image encoded per answer"] / results["shared image encoding"]
  print(f"  speed-up of shared encoding: {ratio:.2f}x")


if __name__ == "__main__":
  main()
