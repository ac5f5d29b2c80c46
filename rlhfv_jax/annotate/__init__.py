"""Collecting fine-grained corrections: model answers → annotators → DDPO data.

`store` (SQLite: items, leases, annotations), `spans` (the corrected segments of an
answer and its correction), `server` (the web app), `export` (preference JSONL + RLHF-V
parquet), and the command line in `__main__`. See docs/annotation.md.
"""
