"""Train-step time of the two savings the trainer is built around.

1. Cached reference log-probs (`precompute_ref` stage, `config.data.use_ref_cache`) vs.
   running the frozen reference model inside every step.
2. A frozen vision tower (`optim.frozen=("vision_tower",)`, LLaVA's setting): the step
   wraps frozen sub-trees in `stop_gradient`, so no backward pass runs through them,
   vs. training the tower.

Each variant is the full update of `rlhfv_jax.train.step.make_train_step` (loss, grads,
clipping, AdamW, non-finite guard), jitted on one device with the state donated; the
script prints the median wall time per step and the ratios.

  python -m benchmarks.train_step                     # CPU-sized model
  python -m benchmarks.train_step --size 7b --batch 4 --dtype bfloat16   # accelerator
"""

from __future__ import annotations

import argparse
import functools

import jax
import ml_collections

from benchmarks.ddpo_step import median_seconds, synthetic_batch
from rlhfv_jax import ddpo, model
from rlhfv_jax.train import objectives, step as step_lib
from rlhfv_jax.train import optimizer as optimizer_lib
from rlhfv_jax.train.train_state import TrainState


def cpu_sized_config() -> ml_collections.ConfigDict:
  """A small LLaVA whose vision tower is a realistic share of the compute."""
  cfg = model.llava_config("tiny", vocab_size=4096)
  cfg.vision.update(image_size=64, patch_size=8, hidden_size=128, intermediate_size=512,
                    num_layers=4, num_heads=4)
  cfg.text.update(hidden_size=128, intermediate_size=384, num_layers=2)
  return cfg


def with_cached_reference(apply_fn, params, batch):
  """The batch with `ref_token_logps` filled in, as the reference cache would."""
  lps = jax.jit(lambda p, t: ddpo.token_logps(
      apply_fn(p, t.input_ids, t.attention_mask, batch.pixel_values), t.targets))
  return batch.replace(chosen=batch.chosen.replace(ref_token_logps=lps(params, batch.chosen)),
                       rejected=batch.rejected.replace(
                           ref_token_logps=lps(params, batch.rejected)))


def seconds_per_step(cfg, params, batch, *, cached_reference: bool, frozen: tuple[str, ...],
                     repeats: int) -> float:
  apply_fn = model.make_apply_fn(cfg)
  objective = objectives.ddpo_objective(apply_fn, ddpo.PAPER_HPARAMS,
                                        cached_reference=cached_reference)
  optim = ml_collections.ConfigDict(dict(learning_rate=1e-5, max_grad_norm=1.0, frozen=frozen))
  optimizer, schedule, labels = optimizer_lib.make_optimizer(optim, params, 100)
  step = jax.jit(step_lib.make_train_step(objective.loss_fn, optimizer, schedule,
                                          trainable=optimizer_lib.trainable_mask(labels)),
                 donate_argnums=(0,))
  frozen_inputs = None if cached_reference else params
  if cached_reference:
    batch = with_cached_reference(apply_fn, params, batch)
  batch = step_lib.split_microbatches(jax.device_get(batch), 1)
  state = TrainState.create(jax.tree.map(jax.numpy.copy, params), optimizer,
                            jax.random.PRNGKey(0))

  def one_step():  # threads the donated state from call to call
    nonlocal state
    state, metrics = step(state, batch, frozen_inputs)
    return metrics

  return median_seconds(one_step, repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="cpu", help="'cpu' (CPU-sized), 'tiny', '7b', '13b'")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--answer_len", type=int, default=48)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  cfg = cpu_sized_config() if args.size == "cpu" else model.llava_config(args.size)
  cfg.dtype = args.dtype
  params = model.init_params(cfg, jax.random.PRNGKey(0))
  batch = synthetic_batch(cfg, args.batch, args.answer_len)
  run = functools.partial(seconds_per_step, cfg, params, batch, repeats=args.repeats)

  results = {
      "reference forward in the step": run(cached_reference=False, frozen=("vision_tower",)),
      "cached reference log-probs": run(cached_reference=True, frozen=("vision_tower",)),
      "vision tower trained": run(cached_reference=True, frozen=()),
  }
  print(f"device: {jax.devices()[0].device_kind}  size={args.size} batch={args.batch} "
        f"answer_len={args.answer_len} dtype={args.dtype}")
  for name, seconds in results.items():
    print(f"  {name:32s} {seconds * 1e3:9.1f} ms / step")
  base = results["cached reference log-probs"]
  print(f"  speed-up of the reference cache: "
        f"{results['reference forward in the step'] / base:.2f}x")
  print(f"  speed-up of freezing the vision tower: {results['vision tower trained'] / base:.2f}x")


if __name__ == "__main__":
  main()
