"""Data: from raw files to `rlhfv_jax.batch` batches.

  records        PreferenceRecord / SFTRecord, validation, ErrorLog (fail fast or skip+list)
  readers        RLHF-V parquet, JSONL + image folder, VQAv2 JSON + COCO images
  writers        write_jsonl: records -> JSONL + images (the inverse of readers.read_jsonl)
  tfds_builders  TFDS builders -> array_record; `prepare`, `open_split` (tfds.data_source)
  tokenizer      chat templates by name (TEMPLATES: Vicuna v1 for LLaVA-1.5, Gemma 3),
                 their tokenizers (SentencePiece / HF dir), ChatTemplate
  images         ImagePreprocessor (PROCESSINGS by name: CLIP for LLaVA-1.5, SigLIP for
                 Gemma 3; transformers' processors), AugmentationPolicy
  packing        tokenize_record, pack_sequence, pack_shared_prefix, choose_bucket,
                 assemble_batch: records -> batch rows at a bucket length
  loader         Loader (grain: shuffled, resumable, per-process), ordered_batches (every
                 example once, for forward-only passes)
  fixed_batches  fixed_size_batches: ordered batches with a validity mask for the tail
  ref_cache      compute_reference_cache, ReferenceCache (reference log-probs keyed by id)
  factory        get_data_config (config.data defaults), make_loader, ordered_batches,
                 precompute_reference

Submodules are imported explicitly (``from rlhfv_jax.data import loader``) so that
importing one piece does not pull in transformers or TFDS.
"""
