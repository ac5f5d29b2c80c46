r"""The embedded default: a miniature RLHF-V experiment, end to end on a CPU.

  python -m rlhfv_jax.main --config configs/demo.py --workdir /tmp/rlhfv_demo

Trains a tiny LLaVA-style model from scratch on a synthetic shape world (web captions,
a share of them mentioning objects that are not in the image), then per seed: VQA SFT,
sampled descriptions, an oracle that corrects only their hallucinated segments, DPO /
DDPO on that feedback, and CHAIR-style evaluation on held-out scenes. Writes the
ablation table (ablation.md / .csv / .png) to the workdir; stages and layout are in
`rlhfv_jax/demo/pipeline.py`.

Variants:
  ""       the full demo: a 1500-step base model, then 3 seeds (see the README for the
           measured time on 2 CPU cores).
  "quick"  the CI check of the whole pipeline (tests/demo/test_demo_quick.py): one seed,
           a 1200-step base model on 4000 scenes, 256 feedback and 96 held-out scenes;
           ~7.5 min on 2 CPU cores. The base model is as long as it is because that is
           what it takes to see: this tiny LLaVA learns shapes only after ~800-1000
           steps (before that every model describes wrong shapes at ~0.7 CHAIR_i and no
           preference stage can lower a rate that perception, not preference, sets).

  python -m rlhfv_jax.main --config configs/demo.py:quick --workdir /tmp/rlhfv_demo_quick

Any field can be overridden, e.g. `--config.demo.seeds=0,1 --config.ddpo.gamma=3`.
"""


from rlhfv_jax.demo import config as demo_config

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
  config = demo_config.default_config()
  if variant == "quick":
    demo = config.demo
    demo.seeds = (0,)
    demo.world.update(num_train_scenes=4000, num_feedback_scenes=384, num_eval_scenes=192)
    demo.sft_web.update(steps=1000)
    demo.sft_vqa.update(steps=10)
    # One generation batch shape for sampling and evaluation: one compilation.
    demo.sampling.batch_size = demo.eval.batch_size = 96
  return config
