"""DDPO loss+grad: wall time and model FLOPs of each saving against the naive step.

Variants (each the policy forward+backward and the frozen reference forward):

  naive                       the image encoded once per answer (as TRL's DPO trainer
                              does), logits at every position
  image once                  chosen and rejected share one vision-tower pass per image
                              (`sequences_per_image=2`), logits at every position
  image once, scored logits   the default: also no LM head over the prompt up to the
                              end of the image tokens (`LlavaApplyFn.scored_from`)

For each: the median wall time, the analytic model FLOPs per pair (the matmuls of the
vision tower, projector, decoder with attention, and LM head; backward = 2x forward for
the trained part, frozen vision tower without backward) and the ratio to naive.

  python -m benchmarks.ddpo_step                  # small CPU-sized model
  python -m benchmarks.ddpo_step --flops_only --size 7b   # LLaVA-1.5-7B shapes, no run
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


def synthetic_batch(cfg, batch: int, answer_len: int, seed: int = 0,
                    prompt_text: int = 8) -> PreferenceBatch:
  rng = np.random.default_rng(seed)
  n_img = model.num_image_tokens(cfg)
  length = 1 + n_img + prompt_text + answer_len

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


def forward_flops(cfg, *, images: int, rows: int, length: int, logit_positions: int) -> float:
  """Matmul FLOPs of one forward: `images` vision-tower passes, `rows` decoder rows of
  `length` tokens, the LM head at `logit_positions` positions per row."""
  v, t = cfg.vision, cfg.text
  patches = (v.image_size // v.patch_size) ** 2
  tokens = patches + 1  # + CLS
  vision = 2 * patches * (v.patch_size ** 2 * v.num_channels) * v.hidden_size
  vision += v.num_layers * (2 * tokens * (4 * v.hidden_size ** 2
                                          + 2 * v.hidden_size * v.intermediate_size)
                            + 4 * tokens ** 2 * v.hidden_size)
  n_image = model.num_image_tokens(cfg)
  projector = 2 * n_image * (v.hidden_size * t.hidden_size + t.hidden_size ** 2)
  d, attention_width = t.hidden_size, t.num_heads * t.head_dim
  per_token = 2 * (d * attention_width + 2 * d * t.num_kv_heads * t.head_dim
                   + attention_width * d + 3 * d * t.intermediate_size)
  decoder = t.num_layers * (length * per_token + 4 * length ** 2 * attention_width)
  head = 2 * logit_positions * d * t.vocab_size
  return images * (vision + projector) + rows * (decoder + head)


def step_flops_per_pair(cfg, length: int, *, images_per_pair: int, logits_from: int) -> float:
  """Policy forward + backward (2x, no backward through the frozen vision tower) plus the
  reference forward, per pair."""
  fwd = forward_flops(cfg, images=images_per_pair, rows=2, length=length,
                      logit_positions=length - logits_from)
  vision = forward_flops(cfg, images=images_per_pair, rows=0, length=length,
                         logit_positions=0)
  return fwd + 2 * (fwd - vision) + fwd


VARIANTS = ("naive", "image once", "image once, scored logits")


def variant_flops(cfg, length: int) -> dict[str, float]:
  n = model.num_image_tokens(cfg)
  return {"naive": step_flops_per_pair(cfg, length, images_per_pair=2, logits_from=0),
          "image once": step_flops_per_pair(cfg, length, images_per_pair=1, logits_from=0),
          "image once, scored logits": step_flops_per_pair(cfg, length, images_per_pair=1,
                                                           logits_from=n)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="bench", help="'bench' (CPU-sized), 'tiny', '7b', '13b'")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--answer_len", type=int, default=64)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--prompt_text", type=int, default=8,
                      help="prompt text tokens besides BOS and the image")
  parser.add_argument("--flops_only", action="store_true",
                      help="print the analytic FLOPs table without running anything")
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
  length = 1 + model.num_image_tokens(cfg) + args.prompt_text + args.answer_len  # as synthetic_batch
  flops = variant_flops(cfg, length)
  print(f"size={args.size} image tokens={model.num_image_tokens(cfg)} prompt text="
        f"{args.prompt_text} answer_len={args.answer_len} (rows of {length} tokens)")
  if args.flops_only:
    for name in VARIANTS:
      print(f"  {name:28s} {flops[name] / 1e12:9.3f} TFLOP / pair  "
            f"{flops[name] / flops['naive']:.2f}x naive")
    return

  params = model.init_params(cfg, jax.random.key(0))
  ref_params = jax.tree.map(jnp.copy, params)
  batch = synthetic_batch(cfg, args.batch, args.answer_len, prompt_text=args.prompt_text)
  everywhere = model.make_apply_fn(cfg, skip_prompt_logits=False)
  functions = {"naive": encode_per_answer(everywhere), "image once": everywhere,
               "image once, scored logits": model.make_apply_fn(cfg)}
  results = {}
  for name in VARIANTS:
    loss_fn = ddpo.make_ddpo_loss(functions[name], ddpo.PAPER_HPARAMS)
    step = jax.jit(jax.value_and_grad(lambda p, r, b: loss_fn(p, r, b)[0]))
    results[name] = median_seconds(lambda: step(params, ref_params, batch), args.repeats)
  print(f"device: {jax.devices()[0].device_kind}  batch={args.batch} dtype={args.dtype}")
  for name in VARIANTS:
    print(f"  {name:28s} {results[name] * 1e3:9.1f} ms / loss+grad "
          f"({results['naive'] / results[name]:.2f}x faster)  "
          f"{flops[name] / 1e9:9.2f} GFLOP / pair ({flops[name] / flops['naive']:.2f}x)")


if __name__ == "__main__":
  main()
