"""Data: records and readers, TFDS (array_record) builders, tokenizer and chat template,
image preprocessing and augmentation, the deterministic grain pipeline that produces
`rlhfv_jax.batch` batches, and the reference log-prob cache.

Submodules are imported explicitly (``from rlhfv_jax.data import pipeline``) so that
importing one piece does not pull in transformers or TFDS.
"""
