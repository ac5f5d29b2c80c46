r"""Iterated on-policy AI-feedback DDPO of a LLaVA-1.5 model (RLAIF-V's loop with RLHF-V's
fine-grained corrections), unattended, in one workdir:

  python -m rlhfv_jax.main --config configs/llava15_iterate.py --workdir /runs/iterate \
      --config.init.params=checkpoint --config.init.checkpoint_dir=/runs/llava15_7b_sft \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.sample.images=/data/feedback_images

Each of `iterate.rounds` (4, as RLAIF-V) rounds samples answers from the current policy
(`sample`: 10 per prompt at temperature 0.7, RLAIF-V's), labels them with the policy
itself (`label`; `--config.iterate.labeler_params=hf
--config.iterate.labeler_hf_checkpoint=...` for another labeler), exports the
corrections (`--config.iterate.ranking_pairs=True` adds RLAIF-V's ranking pairs), and
trains DDPO from the policy with the policy as reference (`rlhfv_jax/stages/iterate.py`).
`--config.iterate.stop_after_label=True` stops each round after labeling for people to
review the proposals (`python -m rlhfv_jax.annotate --store
/runs/iterate/round_<k>/annotations.sqlite`); re-running continues. With local benchmark
files (`configs/llava15_hallucination_eval.py` lists them)
`--config.iterate.evaluate=True` scores every round's policy.

Variants: a size (",7b" / ",13b") pins the architecture; without one it follows the
checkpoint.
"""

from rlhfv_jax.stages import recipes


def get_config(arg: str = ""):
  return recipes.iterate_recipe("llava15", "configs/llava15_iterate.py", arg)
