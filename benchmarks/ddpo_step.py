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

With `--lora_rank r` (> 0) the script then compares LoRA against full training, both
with the default shared-prefix batch (the same one), the reference forward in the step,
in the same run:

  full                        every parameter but the vision tower trains; the
                              reference is a separate copy of the params
  LoRA r                      `model.lora.rank = r`, alpha = 2r, on every attention and
                              MLP projection of the decoder, nothing else trained
                              (`objectives.with_lora`): the policy is
                              `lora.merge(base, adapters)`, the reference the base itself

Each is timed twice: loss + grad (here with the frozen vision tower under
`stop_gradient`, as the train step has it; the table above differentiates every
parameter) and the whole update of `rlhfv_jax.train.step.make_train_step` (grads,
clipping, AdamW, non-finite guard; state donated), in `--repeats` rounds that alternate
the four calls (a load on the machine slows both alike). Printed: the median times, the
trained-parameter counts, the analytic FLOPs per pair (LoRA: no weight gradients of the
base, so its backward is the activation gradients alone, plus the adapters') and the
LoRA / full ratios. The base and the full run's params are the same float32 arrays,
computed in `--dtype`. The adapters' B is perturbed from its zero init so that the
policy differs from its reference, as the full run's reference is the params x 1.01.

  python -m benchmarks.ddpo_step                  # small CPU-sized model
  python -m benchmarks.ddpo_step --flops_only --size 7b   # LLaVA-1.5-7B shapes, no run
  python -m benchmarks.ddpo_step --size 7b --batch 8 --dtype bfloat16   # on an accelerator
  python -m benchmarks.ddpo_step --size 7b --layers 4 --dtype bfloat16   # a 7B slice
  python -m benchmarks.ddpo_step --lora_rank 8 --repeats 20   # + LoRA r8 vs full, CPU model
  python -m benchmarks.ddpo_step --flops_only --size 7b --lora_rank 64   # + LoRA's FLOPs
"""

from __future__ import annotations

import argparse
import copy
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks.common import cpu_model
from rlhfv_jax import ddpo, logps, model
from rlhfv_jax.batch import PreferenceBatch
from rlhfv_jax.data import packing
from rlhfv_jax.model import lora
from rlhfv_jax.train import objectives, step as step_lib
from rlhfv_jax.train import optimizer as optimizer_lib
from rlhfv_jax.train.train_state import TrainState

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


def lora_step_flops_per_pair(cfg, length: int, rank: int, *, logits_from: int,
                             reference: bool = True) -> float:
  """A LoRA step on shared-prefix rows (one per pair): the policy forward with the
  adapters on every projection, the backward of the activations through the decoder and
  LM head only (1x their forward: no weight gradients of the frozen base, nothing
  through the projector or vision tower), the adapters' backward (2x theirs) and the
  reference forward (the base) unless cached."""
  fwd = forward_flops(cfg, images=1, rows=1, length=length,
                      logit_positions=length - logits_from)
  image = forward_flops(cfg, images=1, rows=0, length=length, logit_positions=0)
  t = cfg.text
  d, q, kv = t.hidden_size, t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
  widths = (d + q) + 2 * (d + kv) + (q + d) + 3 * (d + t.intermediate_size)
  adapters = t.num_layers * length * 2 * rank * widths
  return (fwd + adapters) + (fwd - image) + 2 * adapters + (fwd if reference else 0)


def trained_count(params: Any, labels: Any) -> int:
  """Parameters the optimizer's `labels` mark trainable."""
  return int(sum(x.size for x, label in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
                 if label == optimizer_lib.TRAINABLE))


def compare_lora(cfg, params, ref_params, batch: PreferenceBatch, rank: int,
                 repeats: int) -> dict[str, dict[str, float]]:
  """Full vs. LoRA (rank `rank`) DDPO on the shared-prefix `batch`: loss+grad and train
  step seconds (medians over `repeats` alternating rounds, after one untimed call each)
  and trained parameters (see the module docstring)."""
  full_apply = model.make_apply_fn(cfg)
  lora_cfg = copy.deepcopy(cfg)
  lora_cfg.lora.update(rank=rank, alpha=2.0 * rank)
  model.validate_config(lora_cfg)
  adapters = lora.initial_trainable(params, lora_cfg.lora, jax.random.key(1))
  noise = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(adapters))))
  adapters = jax.tree_util.tree_map_with_path(  # B away from 0: policy != reference
      lambda path, x: (0.01 * jax.random.normal(next(noise), x.shape, x.dtype)
                       if optimizer_lib.path_str(path).endswith("lora_b") else x), adapters)
  full = objectives.ddpo_objective(full_apply, ddpo.PAPER_HPARAMS, cached_reference=False)
  low = objectives.with_lora(objectives.ddpo_objective(
      model.make_apply_fn(lora_cfg), ddpo.PAPER_HPARAMS, cached_reference=False))
  setups = {"full": (full, params, ref_params, ("vision_tower",)),
            f"LoRA r{rank}": (low, adapters, params, ())}
  micro = step_lib.split_microbatches(jax.device_get(batch), 1)
  calls, out = {}, {}
  for name, (objective, trained, frozen_inputs, frozen) in setups.items():
    optim = ml_collections.ConfigDict(dict(learning_rate=1e-5, max_grad_norm=1.0,
                                           frozen=frozen))
    optimizer, schedule, labels = optimizer_lib.make_optimizer(optim, trained, 100)
    mask = optimizer_lib.trainable_mask(labels) if frozen else None

    def loss(p, f, b, loss_fn=objective.loss_fn, mask=mask):
      if mask is not None:  # frozen sub-trees as constants, as the train step has them
        p = jax.tree.map(lambda x, t: x if t else jax.lax.stop_gradient(x), p, mask)
      return loss_fn(p, f, b, jax.random.key(0))[0]

    grad = jax.jit(jax.value_and_grad(loss))
    step = jax.jit(step_lib.make_train_step(objective.loss_fn, optimizer, schedule,
                                            trainable=mask), donate_argnums=(0,))
    box = [TrainState.create(jax.tree.map(jnp.copy, trained), optimizer,
                             jax.random.PRNGKey(0))]

    def one_step(step=step, box=box, frozen_inputs=frozen_inputs):
      box[0], metrics = step(box[0], micro, frozen_inputs)  # threads the donated state
      return metrics

    calls[name] = {"grad": functools.partial(grad, trained, frozen_inputs, batch),
                   "step": one_step}
    out[name] = dict(loss=float(grad(trained, frozen_inputs, batch)[0]),
                     trained=trained_count(trained, labels))
  # Alternating rounds, so that a load on the machine slows both setups alike.
  times = {(name, kind): [] for name in calls for kind in ("grad", "step")}
  for (name, kind) in times:
    jax.block_until_ready(calls[name][kind]())  # compile
  for _ in range(repeats):
    for (name, kind), seconds in times.items():
      start = time.perf_counter()
      jax.block_until_ready(calls[name][kind]())
      seconds.append(time.perf_counter() - start)
  for (name, kind), seconds in times.items():
    out[name][kind] = float(np.median(seconds))
  return out


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
  parser.add_argument("--lora_rank", type=int, default=0,
                      help="> 0: also compare LoRA of this rank against full training")
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
  n_image = model.num_image_tokens(cfg)
  lora_flops = lora_step_flops_per_pair(cfg, packed, args.lora_rank, logits_from=n_image)
  if args.flops_only:
    for name in VARIANTS:
      print(f"  {name:28s} {flops[name] / 1e12:9.3f} TFLOP / pair  "
            f"{flops[name] / flops['naive']:.2f}x naive")
    if args.lora_rank > 0:
      print(f"  {f'shared prefix, LoRA r{args.lora_rank}':28s} {lora_flops / 1e12:9.3f} "
            f"TFLOP / pair  {lora_flops / flops['naive']:.2f}x naive, "
            f"{lora_flops / flops['shared prefix']:.2f}x full shared prefix")
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
  if args.lora_rank <= 0:
    return

  runs = compare_lora(cfg, params, ref_params, batches[True], args.lora_rank, args.repeats)
  (full_name, full), (lora_name, low) = runs.items()
  print(f"LoRA against full DDPO, shared prefix, reference forward in the step, on "
        f"{cpu_model() if jax.default_backend() == 'cpu' else jax.devices()[0].device_kind} "
        f"(losses: full {full['loss']:.6f}, LoRA {low['loss']:.6f})")
  print("| step | loss+grad, ms | train step, ms | trained params | GFLOP / pair |")
  print("|---|---|---|---|---|")
  for name, run, f in ((full_name, full, flops["shared prefix"]), (lora_name, low, lora_flops)):
    print(f"| {name} | {run['grad'] * 1e3:.1f} | {run['step'] * 1e3:.1f} | "
          f"{run['trained']:,} | {f / 1e9:.2f} |")
  print(f"| LoRA / full | {low['grad'] / full['grad']:.2f}x | "
        f"{low['step'] / full['step']:.2f}x | {low['trained'] / full['trained']:.4f}x | "
        f"{lora_flops / flops['shared prefix']:.2f}x |")


if __name__ == "__main__":
  main()
