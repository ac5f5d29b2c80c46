"""The full run config with every field at its default; config files start from it.

Sections (see `rlhfv_jax.train.config_validation` for what is checked):

  stage        "sft" | "precompute_ref" | "ddpo" | "eval"
  seed         run seed (parameter init, the step RNG)
  init         where the starting params come from: params = "random" | "hf" |
               "checkpoint"; hf_checkpoint (local llava-hf dir); checkpoint_dir (workdir
               of an earlier stage) and checkpoint_step (-1: its latest)
  model        the model config (`rlhfv_jax.model.llava_config`)
  data         the data config (`rlhfv_jax.data.factory.get_data_config`)
  ddpo         gamma, beta, normalize, loss_type, label_smoothing, segment_mode
  train        global_batch_size, grad_accum_steps, num_epochs / num_steps,
               parallelism ("pmap" | "fsdp"), mesh.{data, fsdp}, log_every,
               max_consecutive_nonfinite
  optim        AdamW + schedule (`rlhfv_jax.train.optimizer`), frozen sub-trees
  checkpoint   every_steps, max_to_keep, async_save
  precompute   batch_size (per process) of the reference log-prob pass
  eval         split, batch_size, objective ("ddpo" | "sft")

Defaults are the paper's DDPO settings (Yu et al. 2024, Sec. 4.1 / App.): beta 0.5,
gamma 5, lr 5e-7, batch 32, 7 epochs, 10% warmup, no image cropping; the vision tower
is frozen as in LLaVA-1.5.
"""

from __future__ import annotations

import ml_collections

from rlhfv_jax import ddpo
from rlhfv_jax import model
from rlhfv_jax.data import factory


def base_config(stage: str = "ddpo", model_size: str = "7b") -> ml_collections.ConfigDict:
  """Every field, at its default, for `stage` and a `model_size` from `llava_config`."""
  config = ml_collections.ConfigDict()
  config.stage = stage
  config.seed = 0
  config.init = ml_collections.ConfigDict(dict(
      params="random", hf_checkpoint="", checkpoint_dir="", checkpoint_step=-1))
  config.model = model.llava_config(model_size)
  config.data = factory.get_data_config()
  config.ddpo = ml_collections.ConfigDict(dict(
      ddpo.PAPER_HPARAMS, loss_type="sigmoid", label_smoothing=0.0, segment_mode="paper",
      check_empty_responses=True))
  config.train = ml_collections.ConfigDict(dict(
      global_batch_size=32, grad_accum_steps=1, num_epochs=7.0, num_steps=0,
      parallelism="pmap", mesh=dict(data=-1, fsdp=1), log_every=10,
      max_consecutive_nonfinite=10))
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=5e-7, schedule="cosine", warmup_fraction=0.1, warmup_steps=0,
      end_lr_fraction=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, max_grad_norm=1.0,
      frozen=("vision_tower",)))
  config.checkpoint = ml_collections.ConfigDict(dict(every_steps=200, max_to_keep=3,
                                                     async_save=True))
  config.precompute = ml_collections.ConfigDict(dict(batch_size=8))
  config.eval = ml_collections.ConfigDict(dict(split="train", batch_size=8, objective="ddpo"))
  return config


def llava15_ddpo(model_size: str, variant: str = "") -> ml_collections.ConfigDict:
  """The paper's DDPO recipe on LLaVA-1.5 (`model_size` "7b" or "13b").

  Variants:
    ""                 DDPO with the paper's hyper-parameters (beta 0.5, gamma 5, mean).
    "rlhfv_release"    the released RLHF-V scripts' weighting: gamma 1.1, beta 0.1,
                       weighted sum (normalize=False), their diff rule (segment_mode
                       "rlhfv").
    "precompute_ref"   the reference pass that fills the cache DDPO reads.
    "eval"             DDPO metrics (reward accuracy/margins) of a trained policy.
  """
  config = base_config("ddpo", model_size)
  config.model.dtype = "bfloat16"
  config.model.remat = True
  config.init.params = "hf"  # init.hf_checkpoint, data.* paths: set on the command line
  config.data.dataset = "rlhfv_parquet"
  config.data.use_ref_cache = True  # reference log-probs from the precompute_ref stage
  # The loader never emits an empty answer; dropping the in-graph host check keeps the
  # step in JAX's persistent compilation cache (minutes of compile at 7B/13B).
  config.ddpo.check_empty_responses = False
  # FSDP over every device: f32 master params + Adam moments of 7B/13B do not fit one
  # 80 GB accelerator (the paper used DeepSpeed ZeRO on 8 A100s).
  config.train.parallelism = "fsdp"
  config.train.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1))
  config.checkpoint.every_steps = 100
  if variant == "rlhfv_release":
    config.ddpo.update(ddpo.RLHFV_RELEASE_HPARAMS, segment_mode="rlhfv")
  elif variant == "precompute_ref":
    config.stage = "precompute_ref"
    config.data.use_ref_cache = False
  elif variant == "eval":
    config.stage = "eval"
    config.init.params = "checkpoint"  # init.checkpoint_dir: the DDPO run's workdir
    config.eval.objective = "ddpo"
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; expected '', 'rlhfv_release', "
                     "'precompute_ref' or 'eval'")
  return config


def llava15_vqav2_sft(model_size: str) -> ml_collections.ConfigDict:
  """VQAv2 SFT of LLaVA-1.5 before DDPO (the paper's remedy for the vision-language
  mismatch). Hyper-parameters are LLaVA-1.5's fine-tuning ones (the paper does not list
  them): lr 2e-5, cosine, 3% warmup, batch 128, 1 epoch, no weight decay."""
  config = base_config("sft", model_size)
  config.model.dtype = "bfloat16"
  config.model.remat = True
  config.init.params = "hf"
  config.data.dataset = "vqav2"
  config.train.update(global_batch_size=128, num_epochs=1.0, parallelism="fsdp")
  config.train.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1))
  config.optim.update(learning_rate=2e-5, warmup_fraction=0.03)
  config.eval.objective = "sft"
  config.checkpoint.every_steps = 500
  return config
