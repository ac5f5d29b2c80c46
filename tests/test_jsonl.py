"""The JSON-lines reader: objects with editor line numbers, bad lines named by file and line."""

from __future__ import annotations

import json

import pytest

from rlhfv_jax import jsonl


def write(tmp_path, *lines: bytes):
  path = tmp_path / "items.jsonl"
  path.write_bytes(b"\n".join(lines) + b"\n")
  return path


def test_objects_come_with_their_line_numbers_blank_lines_counted(tmp_path):
  path = write(tmp_path, b'{"id": 1}', b"", b"   ", b'{"id": 2, "text": "caf\xc3\xa9"}\r',
               b'{"id": 3, "text": "a\xe2\x80\xa8b"}')  # U+2028 inside a string
  assert list(jsonl.read_objects(path)) == [
      (1, {"id": 1}), (4, {"id": 2, "text": "café"}), (5, {"id": 3, "text": "a\u2028b"})]
  assert list(jsonl.read_objects(write(tmp_path, b""))) == []


@pytest.mark.parametrize("line, problem", [
    (b'{"id": 2, broken', "not valid JSON"),
    (b'{"text": "caf\xe9"}', "not valid UTF-8"),
    (b'[1, 2]', "expected a JSON object, got list"),
])
def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path, line, problem):
  path = write(tmp_path, b'{"id": 1}', b"", line, b'{"id": 4}')
  with pytest.raises(jsonl.JsonlError, match=f"items.jsonl line 3: {problem}") as info:
    list(jsonl.read_objects(path))
  error = info.value
  assert isinstance(error, ValueError)
  assert (error.path, error.line_number) == (path, 3) and error.problem.startswith(problem)
  assert str(error) == f"{path} line 3: {error.problem}"


def test_on_error_skips_bad_lines_or_raises(tmp_path):
  path = write(tmp_path, b'{"id": 1}', b"{not json", b'"text"', b'{"id": 4}')
  seen = []
  assert [n for n, _ in jsonl.read_objects(path, seen.append)] == [1, 4]
  assert [(e.line_number, e.problem.split(" (")[0]) for e in seen] == [
      (2, "not valid JSON"), (3, "expected a JSON object, got str")]
  assert isinstance(seen[0].__cause__, json.JSONDecodeError)

  def refuse(error):
    raise RuntimeError(f"refused: {error}")

  with pytest.raises(RuntimeError, match="refused: .*items.jsonl line 2: not valid JSON") as info:
    list(jsonl.read_objects(path, refuse))
  assert info.value.__context__ is None  # raised outside the reader's own handling


def test_callers_name_their_own_problems_the_same_way(tmp_path):
  error = jsonl.JsonlError(tmp_path / "q.jsonl", 7, "missing ['image']")
  assert str(error) == f"{jsonl.location(tmp_path / 'q.jsonl', 7)}: missing ['image']"
  assert jsonl.location("q.jsonl", 7) == "q.jsonl line 7"
  with pytest.raises(FileNotFoundError):
    list(jsonl.read_objects(tmp_path / "missing.jsonl"))
