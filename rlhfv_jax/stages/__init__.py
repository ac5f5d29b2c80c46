"""What `python -m rlhfv_jax.main` runs: the stage registry, the recipe defaults, config
validation, where a run's model comes from, and the stages themselves (train, reference
log-probs, eval, hallucination benchmarks, sampling, export)."""
