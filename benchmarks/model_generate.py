"""Generation speed: KV-cache decoding vs. recomputing the whole sequence per token.

`rlhfv_jax.model.generate` prefills the prompt once and then runs one token per step
against a KV cache. The baseline re-runs the full forward pass over the fixed-size
(prompt + max_new_tokens) buffer for every new token, which is what generation without
a cache costs. Both are jitted, fixed-shape, greedy; this prints tokens/s and the ratio
(and checks that both produce the same tokens).

  python -m benchmarks.model_generate                      # small CPU-sized model
  python -m benchmarks.model_generate --size 7b --dtype bfloat16 --batch 8  # accelerator
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlhfv_jax import model
from rlhfv_jax.model import generate as generate_lib


def small_config():
  """A CPU-friendly model, larger than "tiny" so that the decoder dominates."""
  cfg = model.llava_config("tiny", vocab_size=4096)
  cfg.text.update(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8,
                  num_kv_heads=8, head_dim=32)
  return cfg


def no_cache_greedy(cfg, max_new_tokens: int):
  """Greedy decoding that recomputes all positions each step (the baseline)."""
  apply_fn = model.make_apply_fn(cfg)

  @jax.jit
  def run(params, input_ids, attention_mask, pixel_values):
    num_rows, prompt_len = input_ids.shape
    ids = jnp.concatenate([input_ids, jnp.zeros((num_rows, max_new_tokens), jnp.int32)], 1)
    mask = jnp.concatenate([attention_mask, jnp.zeros((num_rows, max_new_tokens), bool)], 1)

    def step(i, state):
      ids, mask = state
      logits = apply_fn(params, ids, mask, pixel_values)
      token = jnp.argmax(logits[:, prompt_len + i - 1], axis=-1).astype(jnp.int32)
      return ids.at[:, prompt_len + i].set(token), mask.at[:, prompt_len + i].set(True)

    ids, _ = jax.lax.fori_loop(0, max_new_tokens, step, (ids, mask))
    return ids[:, prompt_len:]

  return run


def timed(fn, *args, repeats: int) -> tuple[float, np.ndarray]:
  out = jax.block_until_ready(fn(*args))  # Compile.
  start = time.perf_counter()
  for _ in range(repeats):
    out = jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / repeats, np.asarray(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="small", choices=["small", "tiny", "7b", "13b"])
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--text_len", type=int, default=32, help="prompt text tokens")
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  cfg = small_config() if args.size == "small" else model.llava_config(args.size)
  cfg.dtype = args.dtype
  params = model.init_params(cfg, jax.random.key(0))
  n_img = model.num_image_tokens(cfg)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, min(cfg.text.vocab_size, cfg.image_token_id),
                     size=(args.batch, 1 + n_img + args.text_len)).astype(np.int32)
  ids[:, 0], ids[:, 1:1 + n_img] = cfg.bos_token_id, cfg.image_token_id
  mask = np.ones_like(ids, bool)
  pixels = rng.normal(size=(args.batch, cfg.vision.image_size, cfg.vision.image_size,
                            3)).astype(np.float32)
  never_eos = -1  # Run every step in both variants.

  cached = generate_lib.make_generate_fn(cfg, max_new_tokens=args.new_tokens)
  cached_s, cached_tokens = timed(
      lambda *a: cached(*a, jax.random.key(0), 0.0, 1.0, jnp.array([never_eos]), 0),
      params, ids, mask, pixels, repeats=args.repeats)
  naive_s, naive_tokens = timed(no_cache_greedy(cfg, args.new_tokens), params, ids, mask,
                                pixels, repeats=args.repeats)
  new = args.batch * args.new_tokens
  print(f"device={jax.devices()[0].device_kind} size={args.size} dtype={args.dtype} "
        f"batch={args.batch} prompt={ids.shape[1]} new_tokens={args.new_tokens}")
  print(f"kv cache:   {cached_s * 1e3:9.1f} ms  {new / cached_s:10.1f} tokens/s")
  print(f"no cache:   {naive_s * 1e3:9.1f} ms  {new / naive_s:10.1f} tokens/s")
  print(f"speed-up:   {naive_s / cached_s:9.2f}x   "
        f"same tokens: {bool((cached_tokens == naive_tokens).all())}")


if __name__ == "__main__":
  main()
