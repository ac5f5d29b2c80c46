r"""DDPO on Gemma 3 (SigLIP + Gemma 3 decoder) with the paper's hyper-parameters.

The same recipe as configs/llava15_ddpo.py (`rlhfv_jax/stages/recipes.py`): beta 0.5,
gamma 5 (weighted mean), lr 5e-7 with 10% warmup then cosine, batch 32, 7 epochs, no image
cropping, vision tower frozen, FSDP over all devices, bf16 + remat. What Gemma 3 changes
is the model family (`rlhfv_jax/model/gemma3/`): 256 image tokens, a 262k vocabulary
whose log-probs are computed `model.logits_chunk` tokens at a time, the Gemma 3 chat
turns and the SigLIP image processing, all read through the family registry.

1. Reference log-probs, once (cached next to the dataset):

  python -m rlhfv_jax.main --config configs/gemma3_ddpo.py:precompute_ref \
      --workdir /runs/gemma3_12b_ref \
      --config.init.hf_checkpoint=/models/gemma-3-12b-it \
      --config.data.tokenizer=/models/gemma-3-12b-it \
      --config.data.source_dir=/data/RLHF-V-Dataset --config.data.data_dir=/data/tfds

2. DDPO (same overrides; resumes by itself from the newest checkpoint in --workdir):

  python -m rlhfv_jax.main --config configs/gemma3_ddpo.py \
      --workdir /runs/gemma3_12b_ddpo \
      --config.init.hf_checkpoint=/models/gemma-3-12b-it \
      --config.data.tokenizer=/models/gemma-3-12b-it \
      --config.data.source_dir=/data/RLHF-V-Dataset --config.data.data_dir=/data/tfds

`--config.data.tokenizer` is the checkpoint directory (tokenizer.json / tokenizer.model
with Gemma's `<start_of_image>`, `<image_soft_token>`, `<end_of_image>`, `<start_of_turn>`,
`<end_of_turn>`; a tokenizer without them is refused before anything runs).

The argument after ":" is "[size][,variant][,lora]":
  size     (none)  the architecture follows the checkpoint's config.json (any Gemma 3);
           "4b" / "12b" / "27b"  pinned: a checkpoint of another size is an error.
  variant  (none)  DDPO, the paper's weighting;
           "rlhfv_release"   the released RLHF-V scripts' weighting (gamma 1.1, beta 0.1);
           "precompute_ref"  the reference pass that fills the cache DDPO reads;
           "eval"            DDPO reward metrics of a trained run.
  peft     "lora"            LoRA (rank 16, alpha 16 on every projection of the decoder,
                             TRL's Gemma 3 vision recipe; lr 2e-5), the base in bf16, the
                             reference the base itself: no precompute_ref pass.
e.g. `configs/gemma3_ddpo.py:27b,lora`.

Before DDPO: configs/gemma3_vqav2_sft.py. After: configs/gemma3_hallucination_eval.py,
configs/gemma3_feedback.py (sample / label / export_hf), configs/gemma3_iterate.py.
"""

from rlhfv_jax.stages import recipes


def get_config(arg: str = ""):
  return recipes.ddpo_recipe("gemma3", "configs/gemma3_ddpo.py", arg)
