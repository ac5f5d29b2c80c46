"""Fixtures for model tests."""

from __future__ import annotations

import pytest

from . import hf_reference


@pytest.fixture
def hf_checkpoint(tmp_path):
  """Factory: (spec, seed, **save_kwargs) -> (torch model, its save_pretrained dir)."""

  made = []

  def make(spec: hf_reference.TinySpec = hf_reference.TinySpec(), seed: int = 0,
           **save_kwargs):
    model = hf_reference.build_hf_llava(spec, seed)
    path = tmp_path / f"hf_checkpoint_{len(made)}"
    made.append(path)
    model.save_pretrained(path, **save_kwargs)
    return model, path

  return make
