"""One DDPO training step: this project (JAX) against transformers' PyTorch model, the way
RLHF-V's released trainer and TRL compute the loss.

  python -m benchmarks.vs_pytorch [--pairs 4] [--repeats 3] [--rounds 5]
  python -m benchmarks.vs_pytorch --family gemma3

Both sides train the same weights (the JAX params exported by `hf_io` and loaded by the
family's transformers class: `LlavaForConditionalGeneration`, or
`Gemma3ForConditionalGeneration` with ``--family gemma3``) on the same batch, on the same
CPU, in the same run:

* PyTorch: chosen and rejected concatenated along the batch (2B sequences), the image
  passed with every sequence (encoded twice per pair), full float32 logits over every
  position, per-token log-probs gathered under the answer masks, the paper's DDPO score
  (weighted mean, γ = 5) and loss (β = 0.5), the frozen reference model under
  `torch.no_grad`, backward, `torch.optim.AdamW` step. SDPA attention.
* JAX: the project's train step (`rlhfv_jax.train.step.make_train_step` with the DDPO
  objective) on its default layout: one shared-prefix row per pair (the prompt and image
  tokens run once, `PreferenceBatch.shared_prefix`), image encoded once per pair, logits
  only from the first scorable position, the reference forward inside the step, AdamW
  (optax), jitted, state donated. ``--unshared`` runs it on one row per answer instead.

The two sides' per-example DDPO scores of both answers (the weighted-mean log-probs) are
checked to agree at the initial weights before anything is timed. Two row
shapes: "image-heavy" (LLaVA-1.5's proportions: 144 image tokens, about two thirds of a
row) and "text-heavy" (16 image tokens, long answers). Prints pairs/s of both and the
ratio.

Gemma 3 (``--family gemma3``): the same small decoder and rows with Gemma 3's layers
(sliding-window and global attention, QK-norm, sandwich norms, tied embeddings), a
SigLIP tower whose patches are pooled 4:1, and a 65,536-entry vocabulary (a quarter of
Gemma 3's 262k; the LM head is then most of the model, as in Gemma 3 4B): the JAX step
computes its log-probs `model.logits_chunk` tokens at a time, PyTorch materialises the
whole [2B, T, V] float32 log-softmax as TRL does. The PyTorch side passes
``token_type_ids`` (image tokens attend to each other both ways, as Gemma 3 trains).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlhfv_jax import ddpo, model as model_lib
from rlhfv_jax.batch import PreferenceBatch
from rlhfv_jax.data import packing
from rlhfv_jax.model import hf_io
from rlhfv_jax.train import objectives, step as step_lib
from rlhfv_jax.train import optimizer as optimizer_lib
from rlhfv_jax.train.train_state import TrainState

GAMMA, BETA, LR = 5.0, 0.5, 1e-5


# Per family: (vocabulary, patches per image token side, tokens per LM-head chunk: the
# Gemma 3 sizes' 1024, LLaVA's none). Gemma 3 pools its
# patches 4:1 (2 x 2), so it needs twice the patches per side for the same image tokens.
FAMILY_SHAPES = {"llava15": (8192, 1, 0), "gemma3": (65536, 2, 1024)}


def shapes(name: str, family: str = "llava15") -> tuple[ml_collections.ConfigDict, int, int]:
  """(model config, prompt text tokens, answer tokens) of a row shape."""
  vocab, pool, chunk = FAMILY_SHAPES[family]
  cfg = model_lib.model_config(family, "tiny", vocab_size=vocab)
  cfg.text.update(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8,
                  num_kv_heads=8, head_dim=32)
  patches = 12 if name == "image-heavy" else 4  # image tokens per side
  cfg.vision.update(image_size=8 * patches * pool, patch_size=8, hidden_size=192,
                    intermediate_size=768, num_layers=6, num_heads=6)
  if "mm_tokens_per_image" in cfg:  # Gemma 3: patches x patches tokens out, and 3 local
    cfg.mm_tokens_per_image = patches * patches  # layers to 1 global one (of 4)
    cfg.text.update(layer_types=("sliding_attention",) * 3 + ("full_attention",),
                    sliding_window=64)
  cfg.logits_chunk = chunk
  model_lib.validate_config(cfg)
  # 144 image tokens of a ~218-token row, as LLaVA-1.5's 576 of ~850; or 16 and long
  # answers.
  return (cfg, 12, 60) if name == "image-heavy" else (cfg, 24, 200)


def make_batches(cfg, pairs: int, text: int, answer: int, seed: int = 0
                 ) -> tuple[PreferenceBatch, PreferenceBatch]:
  """The same pairs as (one row per answer, one shared-prefix row per pair), packed by the
  data pipeline: [BOS, image, prompt text | answer | EOS]; the rejected answer differs
  from the chosen one in a few segments (marked corrected on both sides)."""
  rng = np.random.default_rng(seed)
  n = model_lib.num_image_tokens(cfg)
  spans = [(answer // 5, answer // 5 + 3), (answer // 2, answer // 2 + 6),
           (4 * answer // 5, 4 * answer // 5 + 2)]
  corrected = np.zeros(answer, bool)
  for start, end in spans:
    corrected[start:end] = True
  ids = lambda k: rng.integers(3, cfg.image_token_id, size=k).astype(np.int32)
  examples = []
  for b in range(pairs):
    prompt = np.concatenate([[cfg.bos_token_id], [cfg.image_token_id] * n, ids(text)])
    chosen = ids(answer)
    rejected = np.where(corrected, ids(answer), chosen)
    examples.append(packing.TokenizedExample(
        id=str(b), index=b, epoch=0, image=b"", prompt_ids=prompt.astype(np.int32),
        answers={"chosen": packing.Answer(chosen, corrected),
                 "rejected": packing.Answer(rejected, corrected)}))
  pixels = rng.normal(size=(pairs, cfg.vision.image_size, cfg.vision.image_size, 3))
  pixels = pixels.astype(np.float32)
  batches = []
  for shared in (False, True):
    length = max(e.required_length(shared) for e in examples)
    batches.append(jax.tree.map(jnp.asarray, packing.assemble_batch(
        examples, pixels, length, eos_id=cfg.eos_token_id, pad_id=cfg.pad_token_id,
        shared_prefix=shared)))
  return tuple(batches)


def jax_scores(cfg, params, batch) -> np.ndarray:
  """[2, B] policy scores (chosen, rejected) of the project's DDPO loss."""
  loss = ddpo.make_ddpo_loss(model_lib.make_apply_fn(cfg), ddpo.PAPER_HPARAMS, reduce=False)
  _, metrics = jax.jit(loss)(params, params, batch)
  return np.stack([metrics["logps/policy_chosen"], metrics["logps/policy_rejected"]])


def jax_step(cfg, params, batch):
  """The seconds-per-step runner of the project's train step."""
  objective = objectives.ddpo_objective(model_lib.make_apply_fn(cfg), ddpo.PAPER_HPARAMS,
                                        cached_reference=False)
  optim = ml_collections.ConfigDict(dict(learning_rate=LR, schedule="constant", b1=0.9,
                                         b2=0.999, eps=1e-8, weight_decay=0.0,
                                         max_grad_norm=0.0, frozen=()))
  optimizer, schedule, labels = optimizer_lib.make_optimizer(optim, params, 1000)
  step = jax.jit(step_lib.make_train_step(objective.loss_fn, optimizer, schedule,
                                          trainable=optimizer_lib.trainable_mask(labels)),
                 donate_argnums=(0,))
  batch = step_lib.split_microbatches(jax.device_get(batch), 1)
  state = TrainState.create(jax.tree.map(jnp.copy, params), optimizer, jax.random.PRNGKey(0))
  reference = jax.tree.map(jnp.copy, params)

  def run(steps: int) -> float:
    nonlocal state
    losses, start = [], time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch, reference)
      losses.append(metrics["loss"])
    jax.block_until_ready(losses)
    return (time.perf_counter() - start) / steps

  return run


def torch_step(cfg, params, batch):
  """(the [2, B] initial policy scores, the seconds-per-step runner) of the same step as
  RLHF-V's trainer / TRL compute it, in PyTorch (module docstring)."""
  import torch
  import transformers
  torch.manual_seed(0)
  with tempfile.TemporaryDirectory() as directory:
    hf_io.save_hf(cfg, params, directory)
    hf_class = getattr(transformers, model_lib.family_of(cfg).hf_class)
    policy = hf_class.from_pretrained(directory, attn_implementation="sdpa",
                                      dtype=torch.float32)
    reference = hf_class.from_pretrained(directory, attn_implementation="sdpa",
                                         dtype=torch.float32).eval()
  policy.train()
  optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=0.0)
  t = lambda x: torch.from_numpy(np.array(x))  # a writable copy
  ids = torch.cat([t(batch.chosen.input_ids), t(batch.rejected.input_ids)]).long()
  targets = torch.cat([t(batch.chosen.targets), t(batch.rejected.targets)]).long()
  loss_mask = torch.cat([t(batch.chosen.loss_mask), t(batch.rejected.loss_mask)]).float()
  corrected = torch.cat([t(batch.chosen.corrected_mask),
                         t(batch.rejected.corrected_mask)]).float()
  pixels = t(batch.pixel_values).permute(0, 3, 1, 2)
  pixels = torch.cat([pixels, pixels])  # every sequence carries its image
  attention = torch.ones_like(ids)
  weights = loss_mask + (GAMMA - 1.0) * corrected
  # Which tokens are an image's: Gemma 3 lets them attend to each other both ways
  # (LLaVA takes no such input).
  image_tokens = {"token_type_ids": (ids == cfg.image_token_id).long()} if (
      "mm_tokens_per_image" in cfg) else {}

  def scores(model):
    logits = model(input_ids=ids, attention_mask=attention, pixel_values=pixels,
                   **image_tokens).logits
    lps = torch.gather(logits.float().log_softmax(-1), 2, targets[..., None])[..., 0]
    score = (lps * weights).sum(-1) / weights.sum(-1)
    return score.chunk(2)

  def run(steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      with torch.no_grad():
        ref_chosen, ref_rejected = scores(reference)
      chosen, rejected = scores(policy)
      h = (chosen - ref_chosen) - (rejected - ref_rejected)
      loss = -torch.nn.functional.logsigmoid(BETA * h).mean()
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
    return (time.perf_counter() - start) / steps

  with torch.no_grad():
    initial = np.stack([s.numpy() for s in scores(policy)])
  return initial, run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3, help="steps per round")
  parser.add_argument("--rounds", type=int, default=5,
                      help="alternating rounds of both sides; each side's median is shown")
  parser.add_argument("--unshared", action="store_true",
                      help="run the JAX step on one row per answer (no shared prefix)")
  parser.add_argument("--family", default="llava15", choices=sorted(FAMILY_SHAPES))
  args = parser.parse_args()
  for name in ("image-heavy", "text-heavy"):
    cfg, text, answer = shapes(name, args.family)
    params = model_lib.init_params(cfg, jax.random.key(0))
    unshared, shared = make_batches(cfg, args.pairs, text, answer)
    batch = unshared if args.unshared else shared
    ours_scores = jax_scores(cfg, params, batch)
    theirs_scores, theirs = torch_step(cfg, params, unshared)
    if not np.allclose(ours_scores, theirs_scores, rtol=1e-4, atol=1e-5):
      raise SystemExit(f"{name}: the DDPO scores differ: JAX {ours_scores} vs PyTorch "
                       f"{theirs_scores}")
    ours = jax_step(cfg, params, batch)
    ours(1), theirs(1)  # compile / warm up
    # Alternating rounds, each side's median: a slow spell of a shared machine hits both.
    rounds = [(ours(args.repeats), theirs(args.repeats)) for _ in range(args.rounds)]
    ours_seconds, theirs_seconds = np.median(rounds, axis=0)
    row = unshared.chosen.input_ids.shape[1]
    print(f"{args.family} {name}: {model_lib.num_image_tokens(cfg)} image tokens of {row}-token rows, "
          f"{answer}-token answers, {args.pairs} pairs; DDPO scores agree (max diff "
          f"{np.abs(ours_scores - theirs_scores).max():.1e})")
    layout = ("one row per answer" if args.unshared else
              f"shared prefix, {batch.chosen.input_ids.shape[1]}-token rows")
    print(f"  JAX (this project, {layout})  {args.pairs / ours_seconds:7.2f} pairs/s")
    print(f"  PyTorch (transformers)  {args.pairs / theirs_seconds:7.2f} pairs/s")
    print(f"  ratio {theirs_seconds / ours_seconds:.2f}x")


if __name__ == "__main__":
  main()
