"""Hallucination benchmarks' scorers, pure Python, usable on a list of answers without any
model: `pope` (POPE), `objhal` (Object HalBench, rule-based CHAIR), `amber` (AMBER
discriminative). Each reproduces its official scorer's rules; the module docstrings say
where it may differ and why.
"""

# The benchmarks, by the names `config.hallucination.benchmarks` uses.
BENCHMARKS = ("pope", "objhal", "amber")
