r"""Hallucination benchmarks of a LLaVA-1.5 model: POPE, Object HalBench (CHAIR, rule-based)
and AMBER (discriminative), from local copies of the benchmark files.

  python -m rlhfv_jax.main --config configs/llava15_hallucination_eval.py \
      --workdir /runs/halbench_7b \
      --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.hallucination.benchmarks=pope,objhal,amber \
      --config.hallucination.pope_dir=/data/POPE/output/coco \
      --config.hallucination.coco_images=/data/coco/val2014 \
      --config.hallucination.coco_annotations=/data/coco/annotations \
      --config.hallucination.amber_dir=/data/AMBER

A trained run instead of the HF checkpoint: `--config.init.params=checkpoint
--config.init.checkpoint_dir=/runs/llava15_7b_ddpo`. The argument after ":" pins a size
("7b" / "13b"); without one the architecture follows the checkpoint. Writes
<bench>_answers.jsonl, hallucination_results.json and hallucination_results.md; a killed
run resumes where it stopped.

Params are replicated on each process's devices, each batch split over them: a 7B/13B
model in bf16 fits one accelerator, and FSDP would all-gather the weights at every
generated token. A model that does not fit one device: `--config.train.parallelism=fsdp`
shards the params over each process's devices (`train.mesh`, e.g. `fsdp=-1`).
"""

from rlhfv_jax.stages import recipes


def get_config(arg: str = ""):
  return recipes.hallucination_eval_recipe("llava15", "configs/llava15_hallucination_eval.py", arg)
