"""Hallucination benchmarks' scorers, pure Python, usable on a list of answers without any
model: `pope` (POPE; RePOPE's corrected labels use the same scorer), `objhal` (Object
HalBench, rule-based CHAIR), `amber` (AMBER discriminative). Each reproduces its official
scorer's rules; the module docstrings say where it may differ and why. `compare` puts
several `hallucination_eval` runs side by side (`bootstrap`: paired intervals).
"""

# The benchmarks, by the names `config.hallucination.benchmarks` uses. RePOPE is not one:
# it is scored from POPE's answers when `hallucination.repope_dir` is given.
BENCHMARKS = ("pope", "objhal", "amber")

# Published numbers to put a run beside, per results entry (see each scorer's docstring
# for the source); the keys are the results' metric names, as fractions. RePOPE's paper
# reports no LLaVA-1.5 model.
PUBLISHED: dict[str, list[tuple[str, dict[str, float]]]] = {
    "pope": [("LLaVA-1.5-7B", {"f1": 0.859})],
    "objhal": [("LLaVA-1.5-7B (GPT path)", {"response_hall": 0.536, "chair_i": 0.252}),
               ("RLHF-V-13B (GPT path)", {"response_hall": 0.122, "chair_i": 0.075})],
    "amber": [("LLaVA-1.5-7B", {"accuracy": 0.735, "f1": 0.776})],
}

# What a `hallucination_eval` run writes into its workdir, read back by `compare`.
RESULTS_JSON = "hallucination_results.json"


def scored_file(name: str) -> str:
  """The file of the per-item values a results entry was computed from (one JSON line per
  scored item): ``<name>_scored.jsonl``."""
  return f"{name}_scored.jsonl"
