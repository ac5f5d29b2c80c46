"""JSON lines: the one reader of ``.jsonl`` inputs, naming the file and line of a bad one.

A file is split at ``\\n`` only (a ``\\r\\n`` ending is JSON whitespace; a ``\\u2028``
inside a string stays in its line). Blank lines are skipped but counted, so line numbers
are the ones an editor shows. Every other line must be one JSON object in UTF-8.

What happens to a bad line is the caller's error policy: by default its `JsonlError` is
raised; with ``on_error`` it is handed over (to raise, or to record and skip). Callers
that check the objects further raise a `JsonlError` of their own for the same format.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, Iterator, Optional, Union

PathLike = Union[str, pathlib.Path]


def location(path: PathLike, line_number: int) -> str:
  """How a line is named in errors: ``"<path> line <n>"``."""
  return f"{path} line {line_number}"


class JsonlError(ValueError):
  """A line that cannot be used, as ``"<path> line <n>: <problem>"``.

  Attributes:
    path: the file, as the caller gave it.
    line_number: 1-based, blank lines included.
    problem: what is wrong, without the location.
  """

  def __init__(self, path: PathLike, line_number: int, problem: str):
    self.path = path
    self.line_number = line_number
    self.problem = problem
    super().__init__(f"{location(path, line_number)}: {problem}")


def _parse(line: bytes, path: PathLike, number: int) -> Union[dict[str, Any], JsonlError]:
  """The object on `line`, or the error saying why there is none."""
  try:
    value = json.loads(line.decode("utf-8"))
  except UnicodeDecodeError as e:
    return _caused(JsonlError(path, number, f"not valid UTF-8 ({e})"), e)
  except json.JSONDecodeError as e:
    return _caused(JsonlError(path, number, f"not valid JSON ({e})"), e)
  if not isinstance(value, dict):
    return JsonlError(path, number, f"expected a JSON object, got {type(value).__name__}")
  return value


def _caused(error: JsonlError, cause: Exception) -> JsonlError:
  error.__cause__ = cause
  return error


def read_objects(path: PathLike, on_error: Optional[Callable[[JsonlError], None]] = None
                 ) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, object) of each non-blank line of a JSON lines file, in file order.

  The file is read lazily, one line at a time.

  Args:
    path: the file.
    on_error: receives the `JsonlError` of a line that is not UTF-8, not JSON or not a
      JSON object; it may raise it or record it, and the line is skipped. None raises.

  Raises:
    JsonlError: a bad line, when `on_error` is None.
    OSError: the file cannot be opened.
  """
  with open(path, "rb") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      item = _parse(line, path, number)
      if isinstance(item, JsonlError):
        # Outside any `except`: an error `on_error` raises carries no chained context.
        if on_error is None:
          raise item
        on_error(item)
      else:
        yield number, item
