"""The embedded default: a miniature RLHF-V experiment on a synthetic shape world.

Modules: `world` (scenes and images), `corpora` (web captions, VQA, prompts),
`oracle` (reading text against ground truth), `labeler` (fine-grained corrections),
`metrics` (CHAIR-style evaluation).
"""
