"""The annotation tool's command line.

  python -m rlhfv_jax.annotate --store annotations.sqlite --images DIR [--host 127.0.0.1]
      [--port 8765] [--token T] [--allowed_host NAME ...] [--lease_seconds 600]
      [--annotations_per_item 1]
  python -m rlhfv_jax.annotate export --store annotations.sqlite --out DIR [--images DIR]
      [--no_spans] [--error_policy skip] [--ranking_pairs pairs.jsonl]
      [--sources human ai ai_ranking]
  python -m rlhfv_jax.annotate add --store annotations.sqlite --images DIR --items answers.jsonl

The first serves the web app and prints its URL (with its token when it has one: always
when the host is not loopback; an empty one is refused). The server answers only
requests whose Host header names it (its address, localhost on loopback, any address on
0.0.0.0, and each --allowed_host). `export` writes the preference data (see
`rlhfv_jax.annotate.export`); an annotation whose image cannot be read is left out and
named (--error_policy raise stops at it instead); --ranking_pairs adds an AI labeler's
ranking pairs among the store's answers (JSON lines, a bad line is an error naming it).
`add` puts answers made elsewhere into the store: JSON lines with ``id``, ``image``
(relative to --images), ``prompt``, ``answer`` and optionally ``meta``. The `sample`
stage of `rlhfv_jax.main` fills the store itself. --images is recorded in the store, so
later commands may leave it out.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Optional, Sequence

from rlhfv_jax import jsonl
from rlhfv_jax.annotate import export as export_lib
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data import records as records_lib

COMMANDS = ("serve", "export", "add")


def _parser(command: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f"python -m rlhfv_jax.annotate {command}",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--store", required=True, help="the SQLite annotation store")
  parser.add_argument("--images", help="the image root (default: the one the store records)")
  if command == "serve":
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", help="required on every request (a random one is made "
                        "when the host is not loopback)")
    parser.add_argument("--allowed_host", action="append", default=[],
                        help="a further name the server is reached by (its Host header); "
                        "repeat for several")
    parser.add_argument("--lease_seconds", type=float, default=store_lib.DEFAULT_LEASE_SECONDS)
    parser.add_argument("--annotations_per_item", type=int, default=1)
  elif command == "export":
    parser.add_argument("--out", required=True, help="folder for the exported data")
    parser.add_argument("--no_spans", action="store_true", help="leave the annotated spans "
                        "out: training then diffs the two answers' tokens (the paper's way)")
    parser.add_argument("--error_policy", choices=records_lib.ERROR_POLICIES, default="skip",
                        help="an annotation whose image cannot be read: left out and listed "
                        "(skip) or an error (raise)")
    parser.add_argument("--ranking_pairs", help="JSON lines of ranking pairs among the "
                        "store's items ({chosen_item_id, rejected_item_id, chosen_score, "
                        "rejected_score, labeler}), exported as preference records too")
    parser.add_argument("--sources", nargs="+", choices=export_lib.SOURCES,
                        default=list(export_lib.SOURCES), help="write only these sources' "
                        "preference pairs (e.g. ai_ranking); the report counts the others")
  else:
    parser.add_argument("--items", required=True, help="JSON lines of answers to add")
  return parser


def read_items(path: pathlib.Path) -> list[store_lib.Item]:
  """Items from JSON lines (module docstring); a bad line is an error naming it."""
  items = []
  for number, row in jsonl.read_objects(path):
    missing = [k for k in ("id", "image", "prompt", "answer")
               if not isinstance(row.get(k), (str, int)) or not str(row[k]).strip()]
    if missing:
      raise jsonl.JsonlError(path, number, f"missing or empty {missing}")
    items.append(store_lib.Item(str(row["id"]), str(row["image"]), str(row["prompt"]),
                                str(row["answer"]), dict(row.get("meta") or {})))
  return items


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  command = argv.pop(0) if argv and argv[0] in COMMANDS else "serve"
  args = _parser(command).parse_args(argv)
  if command == "serve":
    from rlhfv_jax.annotate import server  # the web stack only when serving
    try:
      token = server.access_token(args.host, args.token)  # refused before anything starts
    except ValueError as e:
      raise SystemExit(str(e)) from None
  kwargs = {}
  if command == "serve":
    kwargs = dict(lease_seconds=args.lease_seconds,
                  annotations_per_item=args.annotations_per_item)
  store = store_lib.AnnotationStore(args.store, **kwargs)
  if args.images:
    store.image_root = args.images
  image_root = store.image_root
  if image_root is None:
    raise SystemExit(f"{args.store} records no image folder: pass --images")
  if command == "serve":
    server.serve(store, image_root, host=args.host, port=args.port, token=token,
                 allowed_hosts=args.allowed_host)
  elif command == "export":
    report = export_lib.export(store, image_root, args.out, with_spans=not args.no_spans,
                               error_policy=args.error_policy,
                               ranking_pairs=args.ranking_pairs, sources=args.sources)
    print(json.dumps(report, indent=2, sort_keys=True))
    for skipped in report["skipped"]:
      print(f"left out: item {skipped['item_id']!r} by {skipped['annotator']!r}: "
            f"{skipped['problem']}", file=sys.stderr)
  else:
    items = read_items(pathlib.Path(args.items))
    for item in items:
      path = export_lib.image_file(image_root, item.image)
      if not path.is_file():
        raise SystemExit(f"item {item.id!r}: image {path} not found")
    print(f"added {store.add_items(items)} of {len(items)} items to {args.store}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
