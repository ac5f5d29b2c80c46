"""Data flows one way: records -> batches -> log-probs -> loss -> step -> loop -> stages -> main.

Every module of the package has a layer below; a module may import only modules of its
own layer or lower ones. A new module must be placed in `LAYERS` (the test says so).
Imports are read from the source (`ast`), including function-local ones.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "rlhfv_jax"

# Module-name prefix -> layer; the longest matching prefix wins.
LAYERS = {
    # Foundations: the batch schema, corrected segments, the model, leaf utilities.
    "rlhfv_jax": 0,  # the package itself
    "rlhfv_jax.batch": 0,
    "rlhfv_jax.segments": 0,
    "rlhfv_jax.jsonl": 0,
    "rlhfv_jax.model": 0,
    "rlhfv_jax.stages.registry": 0,  # names only; entries are imported when run
    "rlhfv_jax.train.train_state": 0,
    "rlhfv_jax.train.checkpointing": 0,
    "rlhfv_jax.train.optimizer": 0,
    "rlhfv_jax.train.multihost": 0,
    "rlhfv_jax.train.metrics": 0,
    "rlhfv_jax.train.mesh": 0,  # meshes and shardings: imports nothing of the package
    "rlhfv_jax.train": 0,  # the package's __init__
    "rlhfv_jax.evals": 0,  # benchmark scorers: pure Python on answers
    # records -> batches
    "rlhfv_jax.data": 1,
    # collecting corrections (store, web app, export): records in, records out
    "rlhfv_jax.annotate": 1,
    # AI feedback on answers (claims, corrections, ranking pairs): text in, text out
    "rlhfv_jax.feedback": 1,
    # batches -> log-probs -> loss
    "rlhfv_jax.logps": 2,
    "rlhfv_jax.ddpo": 3,
    # loss -> step -> loop
    "rlhfv_jax.train.step": 4,
    "rlhfv_jax.train.parallel": 4,  # runs the step on devices
    "rlhfv_jax.train.objectives": 4,
    "rlhfv_jax.train.loop": 4,
    # what a stage is built from
    "rlhfv_jax.stages.model_init": 5,
    "rlhfv_jax.stages.config_validation": 5,
    "rlhfv_jax.stages.defaults": 5,
    "rlhfv_jax.stages.recipes": 5,
    "rlhfv_jax.sampler": 5,
    "rlhfv_jax.stages.answering": 5,
    # stages
    "rlhfv_jax.stages.training": 6,
    "rlhfv_jax.stages.reference": 6,
    "rlhfv_jax.stages.evaluate": 6,
    "rlhfv_jax.stages.runner": 6,
    "rlhfv_jax.stages.hallucination_eval": 6,
    "rlhfv_jax.stages.sample": 6,
    "rlhfv_jax.stages.label": 6,
    "rlhfv_jax.stages.iterate": 6,
    "rlhfv_jax.stages.export_hf": 6,
    "rlhfv_jax.demo": 7,
    # main
    "rlhfv_jax.main": 8,
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
  matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
  return LAYERS[max(matches, key=len)] if matches else None


def imported_modules(path: pathlib.Path) -> set[str]:
  """Package modules `path` imports ("from a.b import c" counts a.b.c if it is a module)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhfv_jax"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        as_path = PACKAGE.parent / full.replace(".", "/")
        is_module = as_path.with_suffix(".py").is_file() or as_path.is_dir()
        out.add(full if is_module else node.module)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("rlhfv_jax"))
  return out


def test_every_module_has_a_layer():
  unplaced = [module_name(p) for p in PACKAGE.rglob("*.py") if layer(module_name(p)) is None]
  assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer():
  violations = []
  for path in sorted(PACKAGE.rglob("*.py")):
    name = module_name(path)
    for target in imported_modules(path):
      if layer(target) > layer(name):
        violations.append(f"{name} (layer {layer(name)}) imports {target} "
                          f"(layer {layer(target)})")
  assert not violations, "\n".join(violations)


def test_the_check_sees_a_violation(tmp_path):
  """Guards the test above: a loss module importing the runner is caught."""
  fake = tmp_path / "ddpo.py"
  fake.write_text("from rlhfv_jax.stages import runner\nimport rlhfv_jax.demo.driver\n")
  targets = imported_modules(fake)
  assert targets == {"rlhfv_jax.stages.runner", "rlhfv_jax.demo.driver"}
  assert all(layer(t) > layer("rlhfv_jax.ddpo") for t in targets)
