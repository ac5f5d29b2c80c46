"""Device memory of the compiled DDPO train step, naive vs. optimized, full vs. LoRA.

  python -m benchmarks.step_memory [--size 7b] [--devices 8] [--length 1024]
                                   [--lora_rank 64] [--lora_alpha 128]
  python -m benchmarks.step_memory --size 13b
  python -m benchmarks.step_memory --family gemma3 --size 27b --lora_rank 0 --length 768

The step of `rlhfv_jax.train.step.make_train_step` (DDPO loss with the frozen reference
forward inside, grads, AdamW) is lowered and compiled on abstract arrays
(`jax.ShapeDtypeStruct`s: nothing is allocated, so the 7B and 13B steps compile on a
laptop), at 1, 2 and 4 pairs per device and rows of `--length` tokens, and XLA's
`memory_analysis()` of the compiled program is printed per device: arguments (params,
optimizer state, batch, the reference / base params), outputs (the donated new state,
aliased with its argument: counted once in the total), and the temporaries (activations,
logits, gradients) where the variants differ; and the number of trained parameters.

Full DDPO rows, compiled for an FSDP mesh of `--devices` CPU devices: "naive" (one row
per answer, the image encoded per answer, logits at every position), "scored logits"
(one image encoding per pair, no LM head before the first scorable position) and
"shared prefix" (the project's default: also one row per pair holding the prompt once,
so the row is `2 * length - prompt` tokens: the same two answers). bf16 compute with f32
master params, frozen vision tower, a separate f32 reference copy, and remat, as the
recipes run.

Vocabulary chunks ("shared prefix, logits in chunks of C"): the shared-prefix step with
`model.logits_chunk = C` (`rlhfv_jax.logps.chunked_targets_logps`: the LM head runs on C
tokens at a time, rematerialized), beside the same step with whole-row logits
("shared prefix" with `logits_chunk = 0`). `--logits_chunk` (default: the family's
config value; 0 leaves the row out). With Gemma 3's 262k vocabulary the whole-row
float32 logits of a 1024-token row are 1 GiB per row, and their gradient as much again.

LoRA rows ("LoRA r64, shared prefix, 1 device"; `--lora_rank 0` leaves them out),
compiled for ONE device (no mesh, no sharding): the same step through
`objectives.with_lora`, with `model.lora.rank = --lora_rank` (64) and
`alpha = --lora_alpha` (default 2 x rank: 128) on every attention and MLP projection of
the decoder, nothing else trained (`model.lora.trained = ()`). The base is held in
bfloat16 (`dtype = param_dtype = "bfloat16"`) and is the frozen input of the step; the
policy is `lora.merge(base, adapters)` and the reference forward, inside the step (no
reference cache), runs on the base itself (the same arrays: no reference copy). Only the
float32 adapters have gradients and AdamW state. Shared-prefix batch, remat. The goal
is <= 40 GB per device at 4 pairs.

Each LoRA row comes twice. XLA:CPU has no bfloat16 kernels: it computes bf16 programs
in f32 and, for the bf16 base, converts every stacked layer kernel to f32 ahead of the
layer loops (the loops slice the converted stack), a temporary f32 copy of the decoder
weights that an accelerator with bf16 support does not make (about 0.75 GiB per 7B
layer, 24 GiB for the 7B decoder). The first row is what XLA:CPU compiles; the second
("less XLA:CPU's f32 copy of the base") keeps its arguments and outputs and takes the
temporaries of the same step compiled on an f32-held base, which needs no such copy:
the estimate for an accelerator. It is on the high side: XLA:CPU's other f32 upcasts
stand, e.g. an f32 copy of the stacked remat residuals (the layers' bf16 inputs, [layers,
pairs, row, hidden]) and f32 attention scores ([pairs, heads, row, row] per layer). The
full rows hold f32 params, which need no such copy.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--family", default="llava15", help="a rlhfv_jax.model.families name")
  parser.add_argument("--size", default="7b")
  parser.add_argument("--logits_chunk", type=int, default=-1,
                      help="tokens per LM-head chunk of the chunked row (-1: the family "
                           "config's value; 0: no chunked row)")
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--pairs", default="1,2,4", help="pairs per device")
  parser.add_argument("--variants", default="",
                      help="comma-separated names of the full-DDPO rows to compile (default: "
                           "all), e.g. 'shared prefix' and the chunked row's 'chunks'")
  parser.add_argument("--prompt_text", type=int, default=64,
                      help="prompt text tokens besides BOS and the image (shared prefix)")
  parser.add_argument("--lora_rank", type=int, default=64,
                      help="rank of the LoRA rows (one device, bf16 base); 0: no LoRA rows")
  parser.add_argument("--lora_alpha", type=float, default=None,
                      help="alpha of the LoRA rows (default: 2 x rank)")
  args = parser.parse_args()
  if "jax" in sys.modules:
    raise SystemExit("run as a script: the device count must be set before jax starts")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  import jax
  import jax.numpy as jnp
  import ml_collections
  from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

  from benchmarks.ddpo_step import encode_per_answer
  from rlhfv_jax import ddpo, model as model_lib
  from rlhfv_jax.batch import PreferenceBatch, TokenSequences
  from rlhfv_jax.model import lora
  from rlhfv_jax.train import mesh as mesh_lib
  from rlhfv_jax.train import objectives, step as step_lib
  from rlhfv_jax.train import optimizer as optimizer_lib
  from rlhfv_jax.train.train_state import TrainState

  cfg = model_lib.model_config(args.family, args.size)
  chunk = int(cfg.get("logits_chunk", 0)) if args.logits_chunk < 0 else args.logits_chunk
  cfg.update(dtype="bfloat16", remat=True, logits_chunk=0)
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
  if chunk > 0:
    chunked_cfg = cfg.copy_and_resolve_references()
    chunked_cfg.logits_chunk = chunk
    variants[f"shared prefix, logits in chunks of {chunk}"] = model_lib.make_apply_fn(
        chunked_cfg)
  if args.variants:
    wanted = [w.strip() for w in args.variants.split(",")]
    variants = {name: fn for name, fn in variants.items()
                if any(name == w or (w == "chunks" and "chunks" in name) for w in wanted)}
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
  full_trained = sum(x.size for x, label in zip(jax.tree.leaves(abstract_params),
                                                jax.tree.leaves(labels))
                     if label == optimizer_lib.TRAINABLE)

  if args.lora_rank > 0:
    # The LoRA step: adapters train, the bf16 base is the frozen input and the reference.
    lora_cfg = model_lib.model_config(args.family, args.size)
    lora_cfg.update(dtype="bfloat16", param_dtype="bfloat16", remat=True)
    alpha = 2.0 * args.lora_rank if args.lora_alpha is None else args.lora_alpha
    lora_cfg.lora.update(rank=args.lora_rank, alpha=alpha)
    model_lib.validate_config(lora_cfg)
    abstract_base = model_lib.param_shapes(lora.base_config(lora_cfg))
    abstract_trainable = jax.eval_shape(
        lambda b: lora.initial_trainable(b, lora_cfg.lora, jax.random.PRNGKey(0)),
        abstract_base)
    lora_optim = ml_collections.ConfigDict(dict(learning_rate=5e-5, max_grad_norm=1.0,
                                                frozen=()))
    lora_optimizer, lora_schedule, _ = optimizer_lib.make_optimizer(
        lora_optim, abstract_trainable, 1000)
    abstract_lora_state = jax.eval_shape(
        lambda t: TrainState.create(t, lora_optimizer, jax.random.PRNGKey(0)),
        abstract_trainable)
    lora_objective = objectives.with_lora(objectives.ddpo_objective(
        model_lib.make_apply_fn(lora_cfg), ddpo.PAPER_HPARAMS, cached_reference=False))
    lora_step = step_lib.make_train_step(lora_objective.loss_fn, lora_optimizer,
                                         lora_schedule)
    one_device = SingleDeviceSharding(jax.devices()[0])
    lora_name = f"LoRA r{args.lora_rank}, shared prefix, 1 device"

  gib = 2.0 ** 30

  def memory_row(pairs: int, name: str, compiled, trained: int,
                 temporaries_of: Optional[Any] = None) -> str:
    """A table row of `compiled`'s memory (its temporaries those of `temporaries_of`
    where given)."""
    memory = compiled.memory_analysis()
    arguments, outputs = memory.argument_size_in_bytes, memory.output_size_in_bytes
    temporaries = (temporaries_of or compiled).memory_analysis().temp_size_in_bytes
    total = arguments + outputs + temporaries - memory.alias_size_in_bytes
    return (f"| {pairs} | {name} | {arguments / gib:.2f} | {outputs / gib:.2f} | "
            f"{temporaries / gib:.2f} | {total / gib:.2f} | {total / 1e9:.1f} | "
            f"{trained / 1e6:,.1f} M |")

  print(f"{args.family} {args.size}: full DDPO on a {args.devices}-device FSDP mesh (bf16 compute, f32 "
        "master params, f32 reference copy, frozen vision tower); rows of "
        f"{args.length} tokens (shared prefix: {packed_length}, a {prompt}-token prompt "
        "once); remat; per device, GiB (and GB)")
  if args.lora_rank > 0:
    print(f"{args.family} {args.size}: LoRA DDPO on 1 device: rank {args.lora_rank}, alpha {alpha:g} on "
          f"{', '.join(lora_cfg.lora.targets)}; bf16 base = the reference (no copy), "
          "f32 adapters + AdamW; shared prefix, reference forward in the step")
  print("| pairs / device | variant | arguments | outputs | temporaries | total | total, GB "
        "| trained params |")
  print("|---|---|---|---|---|---|---|---|")
  for pairs in (int(p) for p in args.pairs.split(",")):
    for name, apply_fn in variants.items():
      objective = objectives.ddpo_objective(apply_fn, ddpo.PAPER_HPARAMS,
                                            cached_reference=False)
      step = step_lib.make_train_step(objective.loss_fn, optimizer, schedule,
                                      trainable=optimizer_lib.trainable_mask(labels))
      batch = abstract_batch(pairs * args.devices, shared_prefix=name.startswith("shared"))
      compiled = jax.jit(
          step, in_shardings=(state_shardings, jax.tree.map(lambda _: batch_sharding, batch),
                              param_shardings),
          out_shardings=(state_shardings, NamedSharding(mesh, P())),
          donate_argnums=(0,)).lower(abstract_state, batch, abstract_params).compile()
      print(memory_row(pairs, name, compiled, full_trained), flush=True)
    if args.lora_rank > 0:
      batch = abstract_batch(pairs, shared_prefix=True)
      jitted = jax.jit(lora_step, in_shardings=one_device, out_shardings=one_device,
                       donate_argnums=(0,))
      compiled = jitted.lower(abstract_lora_state, batch, abstract_base).compile()
      trained = lora.num_params(abstract_trainable)
      print(memory_row(pairs, lora_name, compiled, trained), flush=True)
      # XLA:CPU has no bf16 kernels: it upcasts the bf16 base's stacked layer kernels to
      # f32 ahead of the layer loops, a copy an accelerator does not make. The same step
      # on an f32-held base makes none: its temporaries, with the bf16 base's arguments.
      f32_base = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32),
                              abstract_base)
      without_copy = jitted.lower(abstract_lora_state, batch, f32_base).compile()
      print(memory_row(pairs, f"{lora_name}, less XLA:CPU's f32 copy of the base",
                       compiled, trained, temporaries_of=without_copy), flush=True)


if __name__ == "__main__":
  main()
