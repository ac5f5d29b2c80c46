r"""The embedded default: a miniature RLHF-V experiment, end to end on a CPU.

  python -m rlhfv_jax.main --config configs/demo.py --workdir /tmp/rlhfv_demo

Pretrains the tiny LLaVA's vision tower to read the synthetic shape world (the
miniature's CLIP), then trains projector and language model on web captions (a share of
them mentioning objects that are not in the image), then per seed: VQA SFT, sampled
descriptions, an oracle that corrects only their hallucinated segments, DPO / DDPO on
that feedback, and CHAIR-style evaluation on held-out scenes. Writes the ablation table
(ablation.md / .csv / .png) to the workdir; the stages are in
`rlhfv_jax/demo/driver.py` (its docstring maps the rest), their settings in
`rlhfv_jax/demo/settings.py`.

Variants:
  ""       the full demo: a 1500-step base model on web captions and its control on
           clean ones, then 3 seeds; paired differences with 95% bootstrap intervals
           (see docs/results.md for the measured time on 2 CPU cores).
  "quick"  the CI check of the whole pipeline (tests/demo/test_demo_quick.py): one seed,
           a 1000-step base model on 4000 scenes, 384 feedback and 192 held-out scenes;
           ~4.5 min on 2 CPU cores. With the pretrained tower the base model learns to
           name what it sees in every base seed and under perturbed numerics (docs/results.md).

  python -m rlhfv_jax.main --config configs/demo.py:quick --workdir /tmp/rlhfv_demo_quick

  "sweep"  the studies behind the table (sweep.md / .csv / .png; budget: <= 40 min on 2
           CPU cores, measured in docs/results.md): the control base on clean captions beside
           the web base (the cause), the VQA-stage candidates of demo.sweep scored on
           validation scenes and one chosen (`sweep.select_vqa`; the full demo's
           defaults are that choice), then per seed DPO and DDPO on 25 / 50 / 100% of
           the feedback pairs.

  python -m rlhfv_jax.main --config configs/demo.py:sweep --workdir /tmp/rlhfv_demo_sweep

Any field can be overridden, e.g. `--config.demo.seeds=0,1 --config.ddpo.gamma=3`.
"""

from rlhfv_jax.demo import settings
from rlhfv_jax.stages import defaults

VARIANTS = ("quick", "sweep")


def get_config(arg: str = ""):
  variant = defaults.parse_arg(arg, "configs/demo.py", variant=VARIANTS).variant
  config = settings.default_config()
  if variant == "quick":
    demo = config.demo
    demo.seeds = (0,)
    demo.control_base = False  # one base model: the CI budget
    demo.world.update(num_train_scenes=4000, num_feedback_scenes=384, num_eval_scenes=192)
    demo.sft_web.update(steps=1000)
    # The VQA stage its CI bounds were measured with (docs/results.md), whatever the full
    # demo's chosen settings are.
    demo.sft_vqa.update(steps=10, learning_rate=1e-3)
    demo.corpus.update(vqa_replay="web", vqa_stage_caption_share=0.3)
    # One generation batch shape for sampling and evaluation: one compilation.
    demo.sampling.batch_size = demo.eval.batch_size = 96
  elif variant == "sweep":
    config.demo.study = "sweep"
  return config
