"""The embedded default: a miniature RLHF-V experiment on a synthetic shape world.

Modules, from the world up:
  `world` (scenes and images), `corpora` (web captions, VQA, prompts), `vocabulary`
  (the SentencePiece model trained in code), `oracle` (reading text against ground
  truth), `labeler` (fine-grained corrections), `scoring` (CHAIR-style scores),
  `stats` (paired bootstrap intervals), `report` (tables and plots), `perception` (the
  miniature's CLIP), `runs` (what each run is called and where it lives), `settings`
  (the demo config and each run's runner config), `datasets` (the JSONL datasets and
  the feedback loop), `context` (what every run shares), `chain` (one seed's chain),
  `ablation`, `sweep` and `iteration` (the studies), `driver` (the entry point and the
  base model).
"""
