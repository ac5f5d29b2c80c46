"""The annotation store: model answers waiting for correction, leases, annotations (SQLite).

One SQLite file (WAL journal, so readers never block the writer) holds:

* ``items``: one model answer to correct (id, image path relative to the image root,
  prompt, answer, how it was sampled in ``meta``). Adding an item twice is a no-op; the
  same id with different content is an error (it would silently change what was shown).
* ``leases``: which annotator holds an item now, until when. An item is leased to one
  annotator at a time; a lease expires after ``lease_seconds`` and the item goes back to
  the pool. Asking for the next item again returns the item one already holds.
* ``annotations``: the current annotation of (item, annotator): the verdict
  (``corrected``, ``no_hallucination`` or ``unclear``), the original and the corrected
  text and the character spans of the corrected segments on both sides (`spans`), who
  and when. Submitting again for the same item revises it (``revision`` counts up), so
  an annotator never has two annotations of one item.
* ``settings``: the image root the item paths are relative to (`image_root`).
* ``submissions``: every submission ever accepted, append-only, with what it stored
  (verdict, text, spans), keyed by the annotator and the client's ``submission_id``.
  Ids are each annotator's own (two annotators may use the same one). A double
  submission (a double click, a retried request) is answered with what the first one
  stored, even after a later revision, and changes nothing; an id its annotator already
  used for another item is refused (`ConflictError`). Stores made when ids were global
  are brought to this layout when opened (`AnnotationStore._migrate`).

Annotators whose name starts with ``ai:`` (`AI_PREFIX`, e.g. ``ai:llava-1.5-7b``) are AI
labelers: their annotations are proposals for people, written through the same
`next_item` and `submit` as anyone's. They never finish an item nor put it first in the
queue (people are handed items as if they were not there), and a labeler is handed every
item it has not annotated yet, whatever people did with it. `proposal` is an item's
latest AI annotation, which the page shows pre-filled; a person who accepts it makes an
annotation of their own, and the AI's stays as it was.

A first annotation made without a live lease of the annotator's own (expired, maybe
leased to someone else since) is still stored, flagged ``lease_lost``: the annotator's
work is never lost. A revision of one's own annotation needs no lease and is never
flagged. If both annotate the item, it simply has two annotations (which the export's
agreement uses). An item is done when it has ``annotations_per_item`` annotations by
people that are not ``unclear``; ``unclear`` hands it to another annotator.

Every method runs in one transaction (``BEGIN IMMEDIATE`` for writes) on a connection of
the calling thread, so the store can be shared by the web server's worker threads. A
submission's checks and diff run before its write transaction, so that the CPU time of
the diff never holds the other annotators' writes back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import secrets
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from rlhfv_jax.annotate import spans as spans_lib

VERDICTS = ("corrected", "no_hallucination", "unclear")
DEFAULT_LEASE_SECONDS = 600.0
AI_PREFIX = "ai:"
# SQL: annotation `a` is a person's (not an AI labeler's, see `is_ai`).
_BY_PERSON = f"substr(a.annotator, 1, {len(AI_PREFIX)}) != '{AI_PREFIX}'"
# SQL: item `i` has fewer than ? annotations by people that are not "unclear".
_NEEDS_MORE = ("(SELECT COUNT(*) FROM annotations a WHERE a.item_id = i.id"
               f" AND a.verdict != 'unclear' AND {_BY_PERSON}) < ?")

_SUBMISSIONS = """(
  annotator TEXT NOT NULL, submission_id TEXT NOT NULL, item_id TEXT NOT NULL,
  verdict TEXT NOT NULL, corrected TEXT, rejected_spans TEXT NOT NULL,
  chosen_spans TEXT NOT NULL, lease_lost INTEGER NOT NULL, revision INTEGER NOT NULL,
  received_at REAL NOT NULL, PRIMARY KEY (annotator, submission_id))"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS items (
  id TEXT PRIMARY KEY, image TEXT NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL,
  meta TEXT NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
  item_id TEXT PRIMARY KEY REFERENCES items(id), annotator TEXT NOT NULL,
  token TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS annotations (
  item_id TEXT NOT NULL REFERENCES items(id), annotator TEXT NOT NULL,
  verdict TEXT NOT NULL, original TEXT NOT NULL, corrected TEXT,
  rejected_spans TEXT NOT NULL, chosen_spans TEXT NOT NULL,
  created_at REAL NOT NULL, updated_at REAL NOT NULL, revision INTEGER NOT NULL,
  PRIMARY KEY (item_id, annotator));
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS submissions {_SUBMISSIONS};
"""


class StoreError(ValueError):
  """A request the store refuses (unknown item, bad verdict, ...), with the reason."""


class UnknownItemError(StoreError):
  """The request names an item the store does not hold."""


class ConflictError(StoreError):
  """A submission id its annotator already used for another item."""


@dataclasses.dataclass(frozen=True)
class Item:
  """A model answer to be corrected.

  Attributes:
    id: unique in the store.
    image: path of the image relative to the image root (never absolute, no "..").
    prompt: the instruction the model answered.
    answer: the model's answer (y_l).
    meta: how the answer was made (model, temperature, top_p, seed, sample index, ...).
  """

  id: str
  image: str
  prompt: str
  answer: str
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Annotation:
  """The current annotation of one item by one annotator (see the module docstring)."""

  item_id: str
  annotator: str
  verdict: str
  original: str
  corrected: Optional[str]
  rejected_spans: tuple[spans_lib.Span, ...]
  chosen_spans: tuple[spans_lib.Span, ...]
  created_at: float
  updated_at: float
  revision: int

  def to_json(self) -> dict[str, Any]:
    row = dataclasses.asdict(self)
    row.update(rejected_spans=[list(s) for s in self.rejected_spans],
               chosen_spans=[list(s) for s in self.chosen_spans])
    return row


@dataclasses.dataclass(frozen=True)
class Lease:
  """An item handed to an annotator: submit with `token` before `expires_at`."""

  item: Item
  annotator: str
  token: str
  expires_at: float


@dataclasses.dataclass(frozen=True)
class Submitted:
  """What a submission did: the annotation it stored; `duplicate` if the annotator's
  submission id had been accepted before (nothing changed; the annotation is what that
  submission stored); `lease_lost` if it was a first annotation without a live lease of
  the annotator's own (stored anyway; a revision never is)."""

  annotation: Annotation
  duplicate: bool
  lease_lost: bool


def check_image_path(item_id: str, image: str) -> str:
  """`image` if it is a relative path that stays under the image root, else StoreError."""
  path = pathlib.PurePosixPath(image.replace("\\", "/"))
  if not image or path.is_absolute() or ".." in path.parts or ":" in image:
    raise StoreError(f"item {item_id!r}: image {image!r} must be a path relative to the "
                     "image root, without '..'")
  return str(path)


def is_ai(annotator: str) -> bool:
  """Whether `annotator` is an AI labeler (its name starts with `AI_PREFIX`)."""
  return annotator.startswith(AI_PREFIX)


def check_annotator(name: str) -> str:
  name = name.strip() if isinstance(name, str) else ""
  if not name or len(name) > 64:
    raise StoreError("an annotator name is 1 to 64 characters")
  return name


def _judged_texts(db: sqlite3.Connection, item_id: str, verdict: str,
                  corrected: Optional[str], edits: Optional[Sequence[spans_lib.Edit]]
                  ) -> tuple[str, Optional[str], list, list]:
  """(answer, corrected text, rejected spans, chosen spans) of a verdict on `item_id`.

  Raises:
    UnknownItemError: no such item.
    StoreError: a "corrected" text that is empty or unchanged, or edits that do not turn
      the answer into the correction.
  """
  item = db.execute("SELECT answer FROM items WHERE id = ?", (item_id,)).fetchone()
  if item is None:
    raise UnknownItemError(f"no item {item_id!r}")
  original = item["answer"]
  if verdict != "corrected":
    return original, original if verdict == "no_hallucination" else None, [], []
  if not isinstance(corrected, str) or not corrected.strip():
    raise StoreError(f"item {item_id!r}: a correction needs the corrected text")
  if corrected == original:
    raise StoreError(f"item {item_id!r}: the corrected text equals the answer; "
                     "submit 'no_hallucination' instead")
  return (original, corrected) + tuple(_spans(item_id, original, corrected, edits))


def _spans(item_id: str, original: str, corrected: str,
           edits: Optional[Sequence[spans_lib.Edit]]) -> tuple[list, list]:
  """The spans of a correction: of the annotator's edits when given, else of the diff."""
  if edits is None:
    return spans_lib.correction_spans(original, corrected)
  try:
    return spans_lib.edit_spans(original, corrected, edits)
  except ValueError as e:
    raise StoreError(f"item {item_id!r}: edits: {e}") from None


class AnnotationStore:
  """The SQLite annotation store (module docstring).

  Args:
    path: the SQLite file (created with its schema if missing).
    lease_seconds: how long an item stays with the annotator it was handed to.
    annotations_per_item: how many annotations by people (other than "unclear") finish
      an item; 2 or more gives the agreement the export reports.
    clock: seconds since the epoch (tests pass a fake one).
  """

  def __init__(self, path: str | pathlib.Path, *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
               annotations_per_item: int = 1, clock: Callable[[], float] = time.time):
    if annotations_per_item < 1:
      raise ValueError(f"annotations_per_item must be >= 1, got {annotations_per_item}")
    self.path = pathlib.Path(path)
    self.lease_seconds = lease_seconds
    self.annotations_per_item = annotations_per_item
    self.clock = clock
    self._local = threading.local()
    self._connection().executescript(_SCHEMA)  # idempotent (IF NOT EXISTS)
    if "rejected_spans" not in self._columns("submissions"):
      self._migrate()

  # -------------------------------------------------------------------------- plumbing

  def _connection(self) -> sqlite3.Connection:
    db = getattr(self._local, "db", None)
    if db is None:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
      db.row_factory = sqlite3.Row
      db.execute("PRAGMA journal_mode=WAL")
      # Safe with WAL: a crash of the process loses nothing committed; only a power cut
      # can lose the last transactions. Saves an fsync per submission.
      db.execute("PRAGMA synchronous=NORMAL")
      db.execute("PRAGMA foreign_keys=ON")
      self._local.db = db
    return db

  @contextlib.contextmanager
  def _transaction(self) -> Iterator[sqlite3.Connection]:
    db = self._connection()
    db.execute("BEGIN IMMEDIATE")
    try:
      yield db
    except BaseException:
      db.execute("ROLLBACK")
      raise
    db.execute("COMMIT")

  def _columns(self, table: str) -> set[str]:
    return {row["name"] for row in self._connection().execute(f"PRAGMA table_info({table})")}

  def _migrate(self) -> None:
    """Brings a store whose submission ids were global to the current layout: the log
    is keyed by (annotator, submission_id) and keeps each submission's spans. Those are
    the annotation's when the submission made the current revision, else the diff's
    (what made them then)."""
    with self._transaction() as db:
      if "rejected_spans" in self._columns("submissions"):
        return  # another process did it first
      rows = db.execute(
          "SELECT s.*, i.answer, a.revision AS current, a.rejected_spans, a.chosen_spans"
          " FROM submissions s LEFT JOIN items i ON i.id = s.item_id"
          " LEFT JOIN annotations a ON a.item_id = s.item_id AND a.annotator = s.annotator"
          " ORDER BY s.rowid").fetchall()
      db.execute(f"CREATE TABLE submissions_new {_SUBMISSIONS}")
      for row in rows:
        rejected, chosen = "[]", "[]"
        if row["current"] == row["revision"]:
          rejected, chosen = row["rejected_spans"], row["chosen_spans"]
        elif row["verdict"] == "corrected" and row["answer"] is not None:
          rejected, chosen = map(json.dumps, spans_lib.correction_spans(row["answer"],
                                                                        row["corrected"]))
        db.execute("INSERT INTO submissions_new VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (row["annotator"], row["submission_id"], row["item_id"], row["verdict"],
                    row["corrected"], rejected, chosen, row["lease_lost"], row["revision"],
                    row["received_at"]))
      db.execute("DROP TABLE submissions")
      db.execute("ALTER TABLE submissions_new RENAME TO submissions")

  def close(self) -> None:
    """Closes this thread's connection."""
    db = getattr(self._local, "db", None)
    if db is not None:
      db.close()
      self._local.db = None

  # -------------------------------------------------------------------------- settings

  @property
  def image_root(self) -> Optional[str]:
    """The folder item image paths are relative to, as recorded by whoever added the
    items (the `sample` stage, `add`), or None."""
    row = self._connection().execute(
        "SELECT value FROM settings WHERE key = 'image_root'").fetchone()
    return None if row is None else row[0]

  @image_root.setter
  def image_root(self, path: str | pathlib.Path) -> None:
    with self._transaction() as db:
      db.execute("INSERT OR REPLACE INTO settings VALUES ('image_root', ?)",
                 (str(pathlib.Path(path).resolve()),))

  # -------------------------------------------------------------------------- items

  def add_items(self, items: Iterable[Item]) -> int:
    """Adds items (one transaction); returns how many were new.

    Raises:
      StoreError: an image path outside the root, or an id already stored with other
        content.
    """
    added, now = 0, self.clock()
    with self._transaction() as db:
      for item in items:
        image = check_image_path(item.id, item.image)
        meta = json.dumps(item.meta, sort_keys=True)
        row = db.execute("SELECT image, prompt, answer, meta FROM items WHERE id = ?",
                         (item.id,)).fetchone()
        if row is None:
          db.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                     (item.id, image, item.prompt, item.answer, meta, now))
          added += 1
        elif tuple(row) != (image, item.prompt, item.answer, meta):
          raise StoreError(f"item {item.id!r} is already in {self.path} with other content")
    return added

  @staticmethod
  def _item(row: sqlite3.Row) -> Item:
    return Item(row["id"], row["image"], row["prompt"], row["answer"], json.loads(row["meta"]))

  def item(self, item_id: str) -> Item:
    row = self._connection().execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
    if row is None:
      raise UnknownItemError(f"no item {item_id!r}")  # the store's path stays private
    return self._item(row)

  def items(self) -> list[Item]:
    return [self._item(r) for r in self._connection().execute(
        "SELECT * FROM items ORDER BY rowid")]

  # -------------------------------------------------------------------------- leases

  def next_item(self, annotator: str) -> Optional[Lease]:
    """Leases the next item to `annotator` (the one it holds, if any), or None when no
    item is left for it: every item is done, annotated by it, or held by another. Only
    people's annotations make an item done; an AI labeler gets every item it has not
    annotated (module docstring), except one another annotator holds: when this
    returns None, `progress`'s "open_for_you" counts those still to come."""
    annotator, now = check_annotator(annotator), self.clock()
    with self._transaction() as db:
      held = db.execute(
          "SELECT l.item_id, l.token FROM leases l WHERE l.annotator = ? AND l.expires_at > ?"
          " AND NOT EXISTS (SELECT 1 FROM annotations a WHERE a.item_id = l.item_id"
          " AND a.annotator = l.annotator) ORDER BY l.expires_at LIMIT 1",
          (annotator, now)).fetchone()
      if held is not None:
        item_id, token = held["item_id"], held["token"]
      else:
        row = db.execute(
            "SELECT i.id FROM items i"
            " WHERE NOT EXISTS (SELECT 1 FROM annotations a WHERE a.item_id = i.id"
            "                   AND a.annotator = ?)"
            " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.item_id = i.id"
            "                 AND l.expires_at > ? AND l.annotator != ?)"
            f" AND (? OR {_NEEDS_MORE})"
            # Items other people started first (so double annotation finishes), then in
            # order.
            " ORDER BY (SELECT COUNT(*) FROM annotations a WHERE a.item_id = i.id"
            f"          AND {_BY_PERSON}) DESC, i.rowid LIMIT 1",
            (annotator, now, annotator, is_ai(annotator),
             self.annotations_per_item)).fetchone()
        if row is None:
          return None
        item_id, token = row["id"], secrets.token_hex(16)
      expires = now + self.lease_seconds
      db.execute("INSERT INTO leases VALUES (?, ?, ?, ?) ON CONFLICT(item_id) DO UPDATE SET"
                 " annotator = excluded.annotator, token = excluded.token,"
                 " expires_at = excluded.expires_at", (item_id, annotator, token, expires))
      item = self._item(db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone())
    return Lease(item, annotator, token, expires)

  # -------------------------------------------------------------------------- annotations

  @staticmethod
  def _annotation(row: sqlite3.Row) -> Annotation:
    return Annotation(
        row["item_id"], row["annotator"], row["verdict"], row["original"], row["corrected"],
        tuple(tuple(s) for s in json.loads(row["rejected_spans"])),
        tuple(tuple(s) for s in json.loads(row["chosen_spans"])),
        row["created_at"], row["updated_at"], row["revision"])

  def submit(self, annotator: str, item_id: str, verdict: str, corrected: Optional[str], *,
             lease_token: str, submission_id: str,
             edits: Optional[Sequence[spans_lib.Edit]] = None) -> Submitted:
    """Stores `annotator`'s annotation of `item_id` (module docstring).

    Args:
      annotator: who.
      item_id: which item.
      verdict: "corrected" (with the corrected text), "no_hallucination" or "unclear".
      corrected: the corrected answer for "corrected"; ignored otherwise.
      lease_token: the token of the lease the item was handed out with.
      submission_id: unique among the annotator's submission attempts, chosen by the
        client; a repeat is answered with what that submission stored.
      edits: for "corrected", the annotator's own edits (`spans.edit_spans`): their spans
        are stored; without them the spans come from the diff of the two texts.

    Raises:
      StoreError: unknown item or verdict, a "corrected" text that is empty or
        unchanged, or edits that do not turn the answer into the correction.
      ConflictError: `submission_id` was the annotator's for another item.
    """
    annotator, now = check_annotator(annotator), self.clock()
    if verdict not in VERDICTS:
      raise StoreError(f"verdict {verdict!r} is not one of {VERDICTS}")
    if not submission_id or len(submission_id) > 128:
      raise StoreError("a submission_id is 1 to 128 characters")
    # Checked and diffed before the write transaction, which would hold every other
    # annotator's writes back for as long as the diff takes. The log is append-only and
    # items never change, so what is read here still holds inside it.
    db = self._connection()
    resent = self._resent(db, annotator, submission_id, item_id)
    if resent is not None:
      return resent
    original, corrected, rejected_spans, chosen_spans = _judged_texts(
        db, item_id, verdict, corrected, edits)
    with self._transaction() as db:
      resent = self._resent(db, annotator, submission_id, item_id)  # a twin came first
      if resent is not None:
        return resent
      lease = db.execute("SELECT annotator, token, expires_at FROM leases WHERE item_id = ?",
                         (item_id,)).fetchone()
      previous = db.execute("SELECT created_at, revision FROM annotations"
                            " WHERE item_id = ? AND annotator = ?",
                            (item_id, annotator)).fetchone()
      # Only late work is flagged: a revision of one's own annotation needs no lease.
      # AI proposals (`propose`) hold no lease by design: never late.
      lease_lost = previous is None and not is_ai(annotator) and not (
          lease is not None and lease["annotator"] == annotator
          and lease["token"] == lease_token and lease["expires_at"] > now)
      created, revision = ((previous["created_at"], previous["revision"] + 1)
                           if previous is not None else (now, 1))
      db.execute("INSERT OR REPLACE INTO annotations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (item_id, annotator, verdict, original, corrected,
                  json.dumps(rejected_spans), json.dumps(chosen_spans), created, now,
                  revision))
      db.execute("INSERT INTO submissions (annotator, submission_id, item_id, verdict,"
                 " corrected, rejected_spans, chosen_spans, lease_lost, revision,"
                 " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (annotator, submission_id, item_id, verdict, corrected,
                  json.dumps(rejected_spans), json.dumps(chosen_spans), int(lease_lost),
                  revision, now))
      db.execute("DELETE FROM leases WHERE item_id = ? AND annotator = ?", (item_id, annotator))
      row = db.execute("SELECT * FROM annotations WHERE item_id = ? AND annotator = ?",
                       (item_id, annotator)).fetchone()
    return Submitted(self._annotation(row), duplicate=False, lease_lost=lease_lost)

  def propose(self, annotator: str, item_id: str, verdict: str,
              corrected: Optional[str]) -> Submitted:
    """Stores an AI labeler's annotation of `item_id` (a proposal: `annotator` is
    "ai:<name>") without a lease: a labeler annotates every item, whoever holds it, and
    its annotation never counts as a person's. Its spans are the diff of the answer and
    `corrected`. The submission id is the content's digest, so proposing the same
    annotation again (a re-run) is a duplicate, and a different one is a revision.

    Raises:
      StoreError: `annotator` is not an AI labeler's name, or as `submit`.
    """
    if not is_ai(check_annotator(annotator)):
      raise StoreError(f"annotator {annotator!r} is not an AI labeler ({AI_PREFIX}<name>): "
                       "people submit through a lease")
    digest = hashlib.sha256(json.dumps([item_id, verdict, corrected]).encode()).hexdigest()
    return self.submit(annotator, item_id, verdict, corrected, lease_token="",
                       submission_id=f"propose-{digest[:40]}")

  def _resent(self, db: sqlite3.Connection, annotator: str, submission_id: str,
              item_id: str) -> Optional[Submitted]:
    """What `annotator`'s submission `submission_id` stored, if it was accepted before.

    Raises:
      ConflictError: it was for another item.
    """
    row = db.execute(
        "SELECT s.*, i.answer, a.created_at FROM submissions s"
        " JOIN items i ON i.id = s.item_id"
        " JOIN annotations a ON a.item_id = s.item_id AND a.annotator = s.annotator"
        " WHERE s.annotator = ? AND s.submission_id = ?",
        (annotator, submission_id)).fetchone()
    if row is None:
      return None
    if row["item_id"] != item_id:
      raise ConflictError(f"submission_id {submission_id!r} of {annotator!r} was already "
                          f"used for item {row['item_id']!r}; a new submission needs a new id")
    annotation = Annotation(
        item_id, annotator, row["verdict"], row["answer"], row["corrected"],
        tuple(tuple(s) for s in json.loads(row["rejected_spans"])),
        tuple(tuple(s) for s in json.loads(row["chosen_spans"])),
        row["created_at"], row["received_at"], row["revision"])
    return Submitted(annotation, duplicate=True, lease_lost=bool(row["lease_lost"]))

  def annotation(self, item_id: str, annotator: str) -> Optional[Annotation]:
    row = self._connection().execute(
        "SELECT * FROM annotations WHERE item_id = ? AND annotator = ?",
        (item_id, annotator)).fetchone()
    return None if row is None else self._annotation(row)

  def proposal(self, item_id: str) -> Optional[Annotation]:
    """The item's AI proposal: its most recently updated annotation by an AI labeler
    (`is_ai`) that is not "unclear", or None."""
    row = self._connection().execute(
        f"SELECT * FROM annotations a WHERE a.item_id = ? AND NOT ({_BY_PERSON})"
        " AND a.verdict != 'unclear' ORDER BY a.updated_at DESC, a.annotator LIMIT 1",
        (item_id,)).fetchone()
    return None if row is None else self._annotation(row)

  def annotations(self) -> list[Annotation]:
    """Every current annotation, in the order the items were added (then oldest first)."""
    return [self._annotation(r) for r in self._connection().execute(
        "SELECT a.* FROM annotations a JOIN items i ON i.id = a.item_id"
        " ORDER BY i.rowid, a.created_at, a.annotator")]

  def num_submissions(self) -> int:
    return self._connection().execute("SELECT COUNT(*) FROM submissions").fetchone()[0]

  def progress(self, annotator: str) -> dict[str, int]:
    """Counts for the page: items, items done, this annotator's annotations, and how
    many items are still open for it (as `next_item` counts them)."""
    annotator = check_annotator(annotator)
    db = self._connection()
    total = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    done = db.execute(f"SELECT COUNT(*) FROM items i WHERE NOT {_NEEDS_MORE}",
                      (self.annotations_per_item,)).fetchone()[0]
    mine = db.execute("SELECT COUNT(*) FROM annotations WHERE annotator = ?",
                      (annotator,)).fetchone()[0]
    open_for_me = db.execute(
        "SELECT COUNT(*) FROM items i WHERE NOT EXISTS (SELECT 1 FROM annotations a"
        f" WHERE a.item_id = i.id AND a.annotator = ?) AND (? OR {_NEEDS_MORE})",
        (annotator, is_ai(annotator), self.annotations_per_item)).fetchone()[0]
    return {"items": total, "done": done, "yours": mine, "open_for_you": open_for_me}
