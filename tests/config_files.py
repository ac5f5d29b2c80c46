"""Loads a config file from configs/ the way `config_flags` does (file path + argument)."""

from __future__ import annotations

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def load(name: str, arg: str | None = None):
  """`get_config(arg)` of configs/<name> (`get_config()` when `arg` is None)."""
  path = REPO / "configs" / name
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)
