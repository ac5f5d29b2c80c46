"""The demo's runs: what each is called, what an arm trains, its label, where it lives.

A `Run` names one runner invocation of the demo: a stage (one of `STAGES`) and, in
the sweep, a candidate setting (of the VQA stage, or a preference schedule) or a
feedback budget. Its `name` is the run's directory, evaluation log and report key
("sft_vqa", "sft_vqa#1", "dpo#2", "dpo%25").

Every run is trained per seed, the base models included: a seed is a training run from
the shared inputs (the training scenes, their captions and the pretrained vision tower,
in `shared_paths`) to the last arm (`seed_paths`).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

SFT_WEB = "sft_web"
# The control base: trained like sft_web on the same scenes, with every caption faithful.
CONTROL = "sft_web_clean"
SFT_VQA = "sft_vqa"
REFERENCE = "reference"  # sft_vqa's log-probs of the feedback (runner "precompute_ref")
# The iterate study's AI labeler: the web base fine-tuned on VQA pairs alone.
LABELER = "labeler"
SFT_STAGES = (SFT_WEB, SFT_VQA)
ARMS = ("dpo", "ddpo_mean", "ddpo_sum", "ddpo_crop")
BASE_MODELS = (SFT_WEB, CONTROL)  # trained per seed from the shared tower and data
MODELS = SFT_STAGES + ARMS
STAGES = (SFT_WEB, CONTROL, SFT_VQA, REFERENCE, LABELER) + ARMS


@dataclasses.dataclass(frozen=True)
class Run:
  """One runner invocation of the demo.

  Attributes:
    stage: one of `STAGES`.
    candidate: in the sweep, the index of the settings the run trains with: for
      "sft_vqa" into ``demo.sweep.vqa_candidates``, for an arm into
      ``demo.sweep.schedules`` (the preference stage's epochs and learning rate).
    budget: for an arm in the sweep, the percentage of the feedback pairs it trains on.
  """

  stage: str
  candidate: int | None = None
  budget: int | None = None

  def __post_init__(self):
    if self.stage not in STAGES:
      raise ValueError(f"demo stage {self.stage!r}; expected one of {STAGES}")
    if self.candidate is not None and self.stage != SFT_VQA and self.stage not in ARMS:
      raise ValueError(f"a candidate is a setting of {SFT_VQA!r} or of an arm {ARMS}, not "
                       f"of {self.stage!r}")
    if self.budget is not None and self.stage not in ARMS:
      raise ValueError(f"a feedback budget is a setting of an arm {ARMS}, not of "
                       f"{self.stage!r}")

  @property
  def name(self) -> str:
    """The run's directory, evaluation log and report key: "dpo", "sft_vqa#1" (a VQA
    candidate), "dpo#2" (a schedule), "dpo%25" (the budget)."""
    name = self.stage
    if self.candidate is not None:
      name += f"#{self.candidate}"
    if self.budget is not None:
      name += f"%{self.budget}"
    return name

  @property
  def validation_name(self) -> str:
    """The key of the run's evaluation on the validation scenes ("sft_vqa#1@val")."""
    return f"{self.name}@val"

  @property
  def runner_stage(self) -> str:
    """The `rlhfv_jax.stages` stage that trains (or precomputes) it."""
    if self.stage in (SFT_WEB, CONTROL, SFT_VQA, LABELER):
      return "sft"
    return "precompute_ref" if self.stage == REFERENCE else "ddpo"

  @property
  def sampled_name(self) -> str:
    """The key of the run's sampled (not greedy) held-out descriptions ("sft_web~T")."""
    return f"{self.name}~T"

  @property
  def is_base(self) -> bool:
    """Whether it is a base model (from the shared tower, on the shared captions)."""
    return self.stage in BASE_MODELS


def vqa_candidate_runs(config: Any) -> tuple[Run, ...]:
  """The sweep's VQA-stage candidates, one run each."""
  return tuple(Run(SFT_VQA, candidate=k)
               for k in range(len(config.demo.sweep.vqa_candidates)))


def schedule_runs(config: Any) -> tuple[Run, ...]:
  """The sweep's preference-schedule candidates, one run per arm of ``demo.sweep.arms``
  each."""
  sweep = config.demo.sweep
  return tuple(Run(arm, candidate=k) for arm in sweep.arms
               for k in range(len(sweep.schedules)))


def budget_runs(config: Any) -> tuple[Run, ...]:
  """The sweep's preference runs: each arm of ``demo.sweep.arms`` on each budget."""
  sweep = config.demo.sweep
  return tuple(Run(arm, budget=b) for arm in sweep.arms for b in sweep.budgets)


@dataclasses.dataclass(frozen=True)
class ArmSpec:
  """A preference-training arm of the ablation."""

  label: str
  ddpo_overrides: Callable[[Any], dict]
  augmentation: str = "none"


ARM_SPECS: dict[str, ArmSpec] = {
    "dpo": ArmSpec("+ DPO (γ=1)", lambda d: dict(gamma=1.0, normalize=True)),
    "ddpo_mean": ArmSpec("+ DDPO (γ={gamma:g}, weighted mean)",
                         lambda d: dict(gamma=d.gamma, normalize=True)),
    "ddpo_sum": ArmSpec("+ DDPO (γ={gamma:g}, weighted sum)",
                        lambda d: dict(gamma=d.gamma, normalize=False)),
    "ddpo_crop": ArmSpec("+ DDPO (γ={gamma:g}) with random crop",
                         lambda d: dict(gamma=d.gamma, normalize=d.normalize),
                         augmentation="random_crop_ablation"),
}
# The oracle's one round of corrections in the iterate study: the ablation's paper arm.
ORACLE_ARM = "ddpo_mean"
# The iterate study's models beside sft_vqa and the oracle arm (their evaluation names).
AI_RANKING = "ai_ranking"


def ai_round(k: int) -> str:
  """The evaluation name of the policy after AI-feedback round k ("ai_round_2")."""
  return f"ai_round_{k}"


SFT_LABELS = {SFT_WEB: "SFT on web captions", CONTROL: "SFT on clean captions (control)",
              SFT_VQA: "+ VQA SFT", LABELER: "the AI labeler (web base + VQA pairs)"}


def models(config: Any) -> tuple[str, ...]:
  """The table's rows, in order: the control base if ``demo.control_base``, then
  `MODELS`."""
  return ((CONTROL,) if config.demo.control_base else ()) + MODELS


def model_labels(config: Any) -> dict[str, str]:
  """Row labels of the reports, by run name."""
  labels = dict(SFT_LABELS)
  labels.update({arm: spec.label.format(gamma=config.ddpo.gamma)
                 for arm, spec in ARM_SPECS.items()})
  for run, candidate in zip(vqa_candidate_runs(config), config.demo.sweep.vqa_candidates):
    labels[run.name] = "+ VQA SFT, " + ", ".join(f"{key}={value}" for key, value
                                                 in sorted(dict(candidate).items()))
  for run in schedule_runs(config):
    schedule = config.demo.sweep.schedules[run.candidate]
    labels[run.name] = f"{labels[run.stage]}, " + ", ".join(
        f"{key}={value:g}" for key, value in sorted(dict(schedule).items()))
  for run in budget_runs(config):
    labels[run.name] = f"{labels[run.stage]}, {run.budget}% of the pairs"
  return labels


@dataclasses.dataclass(frozen=True)
class SeedPaths:
  """Where one seed's data and runs live."""

  root: pathlib.Path

  def data(self, name: str) -> pathlib.Path:
    return self.root / "data" / name

  @property
  def feedback_samples(self) -> pathlib.Path:
    """Every sampled description with the oracle's verdict (outside the dataset dir:
    each ``*.jsonl`` there is a split)."""
    return self.root / "feedback_samples.jsonl"

  @property
  def annotations(self) -> pathlib.Path:
    """The annotation store the sampled descriptions and the oracle's verdicts go to."""
    return self.root / "annotations.sqlite"

  @property
  def feedback_images(self) -> pathlib.Path:
    """The image root of the annotation store."""
    return self.root / "feedback_images"

  @property
  def feedback_export(self) -> pathlib.Path:
    """The store's export (`rlhfv_jax.annotate.export`); DDPO reads its preference/."""
    return self.root / "feedback_export"

  @property
  def tfds(self) -> pathlib.Path:
    return self.root / "tfds"

  @property
  def perception(self) -> pathlib.Path:
    """The pretrained vision tower in a random LLaVA: the base models' initial
    checkpoint (in `shared_paths`)."""
    return self.root / "perception"

  def run(self, run: Run) -> pathlib.Path:
    return self.root / run.name

  def eval(self, name: str) -> pathlib.Path:
    """The evaluation log of `name` (a run's `name`, or its `validation_name`)."""
    return self.root / "eval" / f"{name}.jsonl"


def shared_paths(root: pathlib.Path) -> SeedPaths:
  """What every seed starts from: the web (and clean) captions and the pretrained tower."""
  return SeedPaths(root / "shared")


def seed_paths(root: pathlib.Path, seed: int) -> SeedPaths:
  """One seed's directories (base models, VQA data, feedback, sft_vqa, reference,
  arms)."""
  return SeedPaths(root / f"seed_{seed}")


@dataclasses.dataclass(frozen=True)
class AIPaths:
  """Where one seed's AI-feedback rounds live (the iterate study)."""

  root: pathlib.Path

  @property
  def questions(self) -> pathlib.Path:
    """The prompt set every round samples from (the `sample` stage's questions file)."""
    return self.root / "questions.jsonl"

  @property
  def images(self) -> pathlib.Path:
    """Its images."""
    return self.root / "images"

  @property
  def rounds(self) -> pathlib.Path:
    """The `iterate` stage's workdir: round_<k>/{sample,label,export,reference,ddpo}."""
    return self.root / "rounds"

  @property
  def ranking(self) -> pathlib.Path:
    """The ranking-pairs run: round 1's ranking pairs alone (export/, reference/, ddpo/)."""
    return self.root / "ranking"


def ai_paths(root: pathlib.Path, seed: int) -> AIPaths:
  """One seed's AI-feedback directories."""
  return AIPaths(seed_paths(root, seed).root / "ai_feedback")


def claims_vocabulary_path(root: pathlib.Path) -> pathlib.Path:
  """The world's objects as a synonyms file: the label stage's claim vocabulary."""
  return root / "claims_vocabulary.txt"


LABELER_DATA = "vqa_labeler"  # the labeler's VQA pairs (no captions)


def vqa_data_name(candidate: int | None) -> str:
  """The VQA stage's dataset, or a sweep candidate's."""
  return "vqa" if candidate is None else f"vqa#{candidate}"


def preference_data_name(budget: int | None) -> str:
  """The export's preference dataset, or a budget's subset of it (written by the sweep)."""
  return "preference" if budget is None else f"preference%{budget}"
