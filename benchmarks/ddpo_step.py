"""DDPO loss+grad: wall time and model FLOPs of each saving against the naive step.

Variants (each the policy forward+backward and the frozen reference forward):

  naive                       the image encoded once per answer (as TRL's DPO trainer
                              does), logits at every position
  image once                  chosen and rejected share one vision-tower pass per image
                              (`sequences_per_image=2`), logits at every position
  image once, scored logits   also no LM head over the prompt up to the end of the
                              image tokens (`LlavaApplyFn.scored_from`)
  shared prefix               the default: also the prompt, image tokens included, once
                              per pair: one row [prompt | chosen | rejected]
                              (`PreferenceBatch.shared_prefix`)
  shared prefix, ref cache    also the reference log-probs read from the reference
                              cache (the ``precompute_ref`` stage), not run in the step

For each: the median wall time, the analytic model FLOPs per pair (the matmuls of the
vision tower, projector, decoder with attention, and LM head; backward = 2x forward for
the trained part, frozen vision tower without backward) and the ratio to naive.

  python -m benchmarks.ddpo_step                  # small CPU-sized model
  python -m benchmarks.ddpo_step --flops_only --size 7b   # LLaVA-1.5-7B shapes, no run
  python -m benchmarks.ddpo_step --size 7b --batch 8 --dtype bfloat16   # on an accelerator
  python -m benchmarks.ddpo_step --size 7b --layers 4 --dtype bfloat16   # a 7B slice
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhfv_jax import ddpo, logps, model
from rlhfv_jax.batch import PreferenceBatch
from rlhfv_jax.data import packing

EOS, PAD = 2, 0


def prompt_length(cfg, prompt_text: int) -> int:
  """BOS + image tokens + prompt text."""
  return 1 + model.num_image_tokens(cfg) + prompt_text


def row_length(cfg, prompt_text: int, answer_len: int, shared_prefix: bool) -> int:
  """Tokens of a row holding one answer (+ EOS), or with `shared_prefix` both answers."""
  return prompt_length(cfg, prompt_text) + (2 if shared_prefix else 1) * (answer_len + 1)


def synthetic_batch(cfg, batch: int, answer_len: int, seed: int = 0, prompt_text: int = 8,
                    shared_prefix: bool = False) -> PreferenceBatch:
  """Random pairs with the data pipeline's layout: answers of `answer_len` tokens whose
  rejected version differs in ~20% of the tokens (the corrected segments)."""
  rng = np.random.default_rng(seed)
  n_img = model.num_image_tokens(cfg)
  ids = lambda k: rng.integers(3, min(cfg.text.vocab_size, cfg.image_token_id), k).astype(np.int32)
  examples = []
  for b in range(batch):
    chosen = ids(answer_len)
    corrected = rng.random(answer_len) < 0.2
    rejected = np.where(corrected, ids(answer_len), chosen)
    prompt = np.concatenate([[cfg.bos_token_id], [cfg.image_token_id] * n_img,
                             ids(prompt_text)]).astype(np.int32)
    examples.append(packing.TokenizedExample(
        id=str(b), index=b, epoch=0, image=b"", prompt_ids=prompt,
        answers={"chosen": packing.Answer(chosen, corrected),
                 "rejected": packing.Answer(rejected, corrected)}))
  size = cfg.vision.image_size
  pixels = rng.normal(size=(batch, size, size, cfg.vision.num_channels)).astype(np.float32)
  host = packing.assemble_batch(
      examples, pixels, row_length(cfg, prompt_text, answer_len, shared_prefix),
      eos_id=EOS, pad_id=PAD, shared_prefix=shared_prefix)
  return jax.tree.map(jnp.asarray, host)


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


def step_flops_per_pair(cfg, length: int, *, images_per_pair: int, logits_from: int,
                        rows_per_pair: int = 2, reference: bool = True) -> float:
  """Policy forward + backward (2x, no backward through the frozen vision tower) plus the
  reference forward unless cached, per pair of `rows_per_pair` rows of `length` tokens."""
  fwd = forward_flops(cfg, images=images_per_pair, rows=rows_per_pair, length=length,
                      logit_positions=length - logits_from)
  vision = forward_flops(cfg, images=images_per_pair, rows=0, length=length,
                         logit_positions=0)
  return fwd + 2 * (fwd - vision) + (fwd if reference else 0)


VARIANTS = ("naive", "image once", "image once, scored logits", "shared prefix",
            "shared prefix, ref cache")


def variant_flops(cfg, prompt_text: int, answer_len: int) -> dict[str, float]:
  n = model.num_image_tokens(cfg)
  length = row_length(cfg, prompt_text, answer_len, shared_prefix=False)
  packed = row_length(cfg, prompt_text, answer_len, shared_prefix=True)
  return {"naive": step_flops_per_pair(cfg, length, images_per_pair=2, logits_from=0),
          "image once": step_flops_per_pair(cfg, length, images_per_pair=1, logits_from=0),
          "image once, scored logits": step_flops_per_pair(cfg, length, images_per_pair=1,
                                                           logits_from=n),
          "shared prefix": step_flops_per_pair(cfg, packed, images_per_pair=1, logits_from=n,
                                               rows_per_pair=1),
          "shared prefix, ref cache": step_flops_per_pair(
              cfg, packed, images_per_pair=1, logits_from=n, rows_per_pair=1, reference=False)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="bench", help="'bench' (CPU-sized), 'tiny', '7b', '13b'")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--answer_len", type=int, default=64)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--prompt_text", type=int, default=8,
                      help="prompt text tokens besides BOS and the image")
  parser.add_argument("--layers", type=int, default=0,
                      help="decoder layers (0: the size's own), e.g. a 7B slice for one device")
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
  if args.layers:
    cfg.text.num_layers = args.layers
  model.validate_config(cfg)
  length, packed = (row_length(cfg, args.prompt_text, args.answer_len, shared)
                    for shared in (False, True))
  flops = variant_flops(cfg, args.prompt_text, args.answer_len)
  print(f"size={args.size} image tokens={model.num_image_tokens(cfg)} prompt text="
        f"{args.prompt_text} answer_len={args.answer_len} (rows of {length} tokens, "
        f"shared-prefix rows of {packed})")
  if args.flops_only:
    for name in VARIANTS:
      print(f"  {name:28s} {flops[name] / 1e12:9.3f} TFLOP / pair  "
            f"{flops[name] / flops['naive']:.2f}x naive")
    return

  params = model.init_params(cfg, jax.random.key(0))
  ref_params = jax.tree.map(lambda x: x * 1.01, params)  # a loss away from log 2
  batches = {shared: synthetic_batch(cfg, args.batch, args.answer_len,
                                     prompt_text=args.prompt_text, shared_prefix=shared)
             for shared in (False, True)}
  everywhere = model.make_apply_fn(cfg, skip_prompt_logits=False)
  functions = {"naive": encode_per_answer(everywhere), "image once": everywhere,
               "image once, scored logits": model.make_apply_fn(cfg),
               "shared prefix": model.make_apply_fn(cfg),
               "shared prefix, ref cache": model.make_apply_fn(cfg)}
  # What the precompute_ref stage would store, merged into the batch.
  chosen, rejected = jax.jit(lambda p, b: logps.answer_token_logps(
      functions["shared prefix"], p, b))(ref_params, batches[True])
  cached = batches[True].replace(chosen=batches[True].chosen.replace(ref_token_logps=chosen),
                                 rejected=batches[True].rejected.replace(ref_token_logps=rejected))
  results, losses = {}, {}
  for name in VARIANTS:
    loss_fn = ddpo.make_ddpo_loss(functions[name], ddpo.PAPER_HPARAMS)
    step = jax.jit(jax.value_and_grad(lambda p, r, b: loss_fn(p, r, b)[0]))
    batch = cached if name.endswith("ref cache") else batches[name.startswith("shared")]
    losses[name] = float(step(params, ref_params, batch)[0])
    results[name] = median_seconds(lambda: step(params, ref_params, batch), args.repeats)
  spread = max(losses.values()) - min(losses.values())
  print(f"the variants' losses agree to {spread:.1e} ({losses['naive']:.6f})")
  print(f"device: {jax.devices()[0].device_kind}  batch={args.batch} dtype={args.dtype}")
  for name in VARIANTS:
    print(f"  {name:28s} {results[name] * 1e3:9.1f} ms / loss+grad "
          f"({results['naive'] / results[name]:.2f}x faster)  "
          f"{flops[name] / 1e9:9.2f} GFLOP / pair ({flops[name] / flops['naive']:.2f}x)")


if __name__ == "__main__":
  main()
