r"""DDPO on LLaVA-1.5 with the paper's hyper-parameters (RLHF-V, Yu et al. 2024).

beta 0.5, gamma 5 (weighted mean), lr 5e-7 with 10% warmup then cosine, batch 32,
7 epochs, no image cropping, vision tower frozen, FSDP over all devices.

1. Reference log-probs, once (cached next to the dataset):

  python -m rlhfv_jax.main --config configs/llava15_ddpo.py:precompute_ref \
      --workdir /runs/llava15_7b_ref \
      --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.data.source_dir=/data/RLHF-V-Dataset --config.data.data_dir=/data/tfds

2. DDPO (same overrides; resumes by itself from the newest checkpoint in --workdir):

  python -m rlhfv_jax.main --config configs/llava15_ddpo.py \
      --workdir /runs/llava15_7b_ddpo \
      --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.data.source_dir=/data/RLHF-V-Dataset --config.data.data_dir=/data/tfds

The argument after ":" is "[size][,variant]":
  size     (none)  the architecture follows the checkpoint (init.model_from_checkpoint:
                   the HF checkpoint's config.json, or an earlier run's config.json);
           "7b" / "13b"  pinned: a checkpoint of another size is an error.
  variant  (none)  DDPO, the paper's weighting;
           "rlhfv_release"   the released RLHF-V scripts' weighting (gamma 1.1, beta 0.1,
                             weighted sum, their diff rule segment_mode="rlhfv");
           "precompute_ref"  the reference pass that fills the cache DDPO reads;
           "eval"            DDPO reward metrics of a trained run
                             (--config.init.checkpoint_dir=/runs/llava15_7b_ddpo).
  peft     "lora"            LoRA on one accelerator (below).
e.g. `configs/llava15_ddpo.py:13b,rlhfv_release`.

LoRA (`:lora`, with any size and weighting): only low-rank adapters on every projection
of the language model train (`rlhfv_jax/model/lora.py`); the frozen reference is the base
itself (the same bfloat16 arrays, the adapters switched off), so no reference copy and no
precompute_ref pass are needed, and the checkpoints hold only the adapters. Rank 128,
alpha 256 as LLaVA-1.5's own LoRA recipe (scripts/v1_5/finetune_lora.sh); learning rate
2e-5, forty times the full-model 5e-7 (LoRA's updates are low-rank and start from B = 0;
LoRA-DPO recipes for LLaVA run at 1e-5 to 5e-5). 7B fits one 80 GB accelerator (the
README's memory table):

  python -m rlhfv_jax.main --config configs/llava15_ddpo.py:lora \
      --workdir /runs/llava15_7b_ddpo_lora \
      --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.data.source_dir=/data/RLHF-V-Dataset --config.data.data_dir=/data/tfds

Every later stage reads the run as any run (hallucination_eval, sample, label, a next
DDPO: plain weights, base + adapters); export_hf writes the merged llava-hf directory and
the adapters alone in the PEFT format (`<out_dir>/peft_adapter`); a PEFT adapter trained
elsewhere is read with `--config.init.peft_adapter=DIR`. Starting from the VQAv2 SFT run instead
of the HF checkpoint: `--config.init.params=checkpoint --config.init.checkpoint_dir=...`.
On a TPU pod or SLURM cluster use launch/tpu_pod.py or launch/slurm_gpu.py, which add
--distributed.
"""

from rlhfv_jax.stages import recipes


def get_config(arg: str = ""):
  return recipes.ddpo_recipe("llava15", "configs/llava15_ddpo.py", arg)
