"""Device memory of the compiled DDPO train step, naive vs. optimized, ahead of time.

  python -m benchmarks.step_memory [--size 7b] [--devices 8] [--length 1024]

The step of `rlhfv_jax.train.step.make_train_step` (DDPO loss with the frozen reference
forward inside, grads, AdamW) is lowered and compiled for an FSDP mesh of `--devices`
CPU devices on abstract arrays (`jax.ShapeDtypeStruct`s: nothing is allocated, so the
7B step compiles on a laptop), at 1, 2 and 4 pairs per device and rows of `--length`
tokens, and XLA's `memory_analysis()` of the compiled program is printed per device:
arguments (params, optimizer state, batch), outputs, and the temporaries (activations,
logits, gradients) where the variants differ.

Variants: "naive" (one row per answer, the image encoded per answer, logits at every
position), "scored logits" (one image encoding per pair, no LM head before the first
scorable position) and "shared prefix" (the project's default: also one row per pair
holding the prompt once, so the row is `2 * length - prompt` tokens: the same two
answers). bf16 compute with f32 master params and remat, as the LLaVA-1.5 recipes run.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="7b")
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--pairs", default="1,2,4", help="pairs per device")
  parser.add_argument("--prompt_text", type=int, default=64,
                      help="prompt text tokens besides BOS and the image (shared prefix)")
  args = parser.parse_args()
  if "jax" in sys.modules:
    raise SystemExit("run as a script: the device count must be set before jax starts")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  import jax
  import jax.numpy as jnp
  import ml_collections
  from jax.sharding import NamedSharding, PartitionSpec as P

  from benchmarks.ddpo_step import encode_per_answer
  from rlhfv_jax import ddpo, model as model_lib
  from rlhfv_jax.batch import PreferenceBatch, TokenSequences
  from rlhfv_jax.train import mesh as mesh_lib
  from rlhfv_jax.train import objectives, step as step_lib
  from rlhfv_jax.train import optimizer as optimizer_lib
  from rlhfv_jax.train.train_state import TrainState

  cfg = model_lib.llava_config(args.size)
  cfg.update(dtype="bfloat16", remat=True)
  mesh = mesh_lib.make_mesh(data=1, fsdp=args.devices)
  abstract_params = model_lib.param_shapes(cfg)
  optim = ml_collections.ConfigDict(dict(learning_rate=5e-7, max_grad_norm=1.0,
                                         frozen=("vision_tower",)))
  optimizer, schedule, labels = optimizer_lib.make_optimizer(optim, abstract_params, 1000)
  abstract_state = jax.eval_shape(
      lambda p: TrainState.create(p, optimizer, jax.random.PRNGKey(0)), abstract_params)
  state_shardings = mesh_lib.fsdp_shardings(mesh, abstract_state, 2 ** 14)
  param_shardings = mesh_lib.fsdp_shardings(mesh, abstract_params, 2 ** 14)
  everywhere = model_lib.make_apply_fn(cfg, skip_prompt_logits=False)
  variants = {"naive": encode_per_answer(everywhere),
              "scored logits": model_lib.make_apply_fn(cfg),
              "shared prefix": model_lib.make_apply_fn(cfg)}
  prompt = 1 + model_lib.num_image_tokens(cfg) + args.prompt_text
  packed_length = 2 * args.length - prompt

  def abstract_batch(pairs: int, shared_prefix: bool):
    rows = (1, pairs)  # (micro-batches, global pairs)
    length = packed_length if shared_prefix else args.length
    tokens = lambda dtype: jax.ShapeDtypeStruct(rows + (length,), dtype)
    sequences = TokenSequences(input_ids=tokens(jnp.int32), attention_mask=tokens(bool),
                               targets=tokens(jnp.int32), loss_mask=tokens(bool),
                               corrected_mask=tokens(bool))
    size = cfg.vision.image_size
    pixels = jax.ShapeDtypeStruct(rows + (size, size, 3), jnp.float32)
    return PreferenceBatch(pixel_values=pixels, chosen=sequences, rejected=sequences,
                           shared_prefix=shared_prefix)

  batch_sharding = NamedSharding(mesh, P(None, mesh_lib.BATCH_AXES))
  print(f"{args.size}: {args.devices}-device FSDP mesh, rows of {args.length} tokens "
        f"(shared prefix: {packed_length}, a {prompt}-token prompt once), bf16 compute + "
        "remat; per device, GiB")
  print("| pairs / device | variant | arguments | outputs | temporaries | total |")
  print("|---|---|---|---|---|---|")
  gib = 2.0 ** 30
  for pairs in (int(p) for p in args.pairs.split(",")):
    for name, apply_fn in variants.items():
      objective = objectives.ddpo_objective(apply_fn, ddpo.PAPER_HPARAMS,
                                            cached_reference=False)
      step = step_lib.make_train_step(objective.loss_fn, optimizer, schedule,
                                      trainable=optimizer_lib.trainable_mask(labels))
      batch = abstract_batch(pairs * args.devices, shared_prefix=name == "shared prefix")
      compiled = jax.jit(
          step, in_shardings=(state_shardings, jax.tree.map(lambda _: batch_sharding, batch),
                              param_shardings),
          out_shardings=(state_shardings, NamedSharding(mesh, P())),
          donate_argnums=(0,)).lower(abstract_state, batch, abstract_params).compile()
      memory = compiled.memory_analysis()
      arguments, outputs = memory.argument_size_in_bytes, memory.output_size_in_bytes
      temporaries = memory.temp_size_in_bytes
      total = arguments + outputs + temporaries - memory.alias_size_in_bytes
      print(f"| {pairs} | {name} | {arguments / gib:.2f} | {outputs / gib:.2f} | "
            f"{temporaries / gib:.2f} | {total / gib:.2f} |", flush=True)


if __name__ == "__main__":
  main()
