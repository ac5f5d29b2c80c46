"""The annotation store: items, leases, submissions, revisions, concurrency."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from rlhfv_jax.annotate import spans as spans_lib
from rlhfv_jax.annotate.store import AnnotationStore, Item, StoreError


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def _store(tmp_path, n=3, **kwargs):
  store = AnnotationStore(tmp_path / "s.sqlite", **kwargs)
  store.add_items(Item(f"i{k}", f"{k}.png", "Describe.", f"A red car number {k}.")
                  for k in range(n))
  return store


def _fix(store, annotator, item_id, lease=None, sid=None, text=None):
  answer = store.item(item_id).answer
  return store.submit(annotator, item_id, "corrected", text or answer.replace("red", "blue"),
                      lease_token=lease.token if lease else "",
                      submission_id=sid or f"{annotator}-{item_id}")


def test_items_are_added_once_and_conflicts_are_refused(tmp_path):
  store = _store(tmp_path)
  assert store.add_items([Item("i0", "0.png", "Describe.", "A red car number 0.")]) == 0
  with pytest.raises(StoreError, match="'i0' is already in .* with other content"):
    store.add_items([Item("i0", "0.png", "Describe.", "Another answer.")])
  assert [i.id for i in store.items()] == ["i0", "i1", "i2"]
  # Reopening the file keeps everything.
  assert [i.id for i in AnnotationStore(tmp_path / "s.sqlite").items()] == ["i0", "i1", "i2"]


@pytest.mark.parametrize("image", ["../secret.png", "/etc/passwd", "a/../../b.png",
                                   "C:\\x.png", ""])
def test_image_paths_must_stay_under_the_root(tmp_path, image):
  store = AnnotationStore(tmp_path / "s.sqlite")
  with pytest.raises(StoreError, match="relative to the image root"):
    store.add_items([Item("bad", image, "Describe.", "An answer.")])
  assert store.items() == []  # the transaction added nothing


def test_leases_one_annotator_at_a_time_and_expire(tmp_path):
  clock = Clock()
  store = _store(tmp_path, n=2, lease_seconds=60, clock=clock)
  a = store.next_item("alice")
  b = store.next_item("bob")
  assert (a.item.id, b.item.id) == ("i0", "i1")
  again = store.next_item("alice")  # a reload gets the same item and lease back
  assert (again.item.id, again.token) == ("i0", a.token)
  assert store.next_item("carol") is None  # both items are held
  clock.now += 61
  c = store.next_item("carol")  # alice's lease expired (renewed at 1000, +60)
  assert c.item.id == "i0" and c.token != a.token
  # Alice submits late: stored anyway, flagged; Carol's annotation is a second one.
  late = _fix(store, "alice", "i0", a)
  assert late.lease_lost and not late.duplicate
  assert not _fix(store, "carol", "i0", c).lease_lost
  assert sorted(x.annotator for x in store.annotations() if x.item_id == "i0") == [
      "alice", "carol"]


def test_double_submission_and_revision_never_duplicate(tmp_path):
  store = _store(tmp_path)
  lease = store.next_item("alice")
  first = _fix(store, "alice", "i0", lease, sid="s1")
  again = _fix(store, "alice", "i0", lease, sid="s1", text="Something else entirely.")
  assert again.duplicate and again.annotation == first.annotation
  assert first.annotation.rejected_spans == ((2, 5),)  # "red"
  assert first.annotation.chosen_spans == ((2, 6),)  # "blue"
  revised = store.submit("alice", "i0", "no_hallucination", None, lease_token="",
                         submission_id="s2")
  assert revised.annotation.revision == 2 and revised.annotation.verdict == "no_hallucination"
  assert revised.annotation.created_at == first.annotation.created_at
  assert len(store.annotations()) == 1 and store.num_submissions() == 2


def test_submission_errors_name_the_problem(tmp_path):
  store = _store(tmp_path)
  with pytest.raises(StoreError, match="no item 'nope'"):
    store.submit("alice", "nope", "unclear", None, lease_token="", submission_id="x")
  with pytest.raises(StoreError, match="verdict 'maybe'"):
    store.submit("alice", "i0", "maybe", None, lease_token="", submission_id="x")
  with pytest.raises(StoreError, match="equals the answer"):
    store.submit("alice", "i0", "corrected", "A red car number 0.", lease_token="",
                 submission_id="x")
  with pytest.raises(StoreError, match="needs the corrected text"):
    store.submit("alice", "i0", "corrected", "  ", lease_token="", submission_id="x")
  with pytest.raises(StoreError, match="annotator name"):
    store.next_item(" ")
  assert store.annotations() == [] and store.num_submissions() == 0


def test_unclear_hands_the_item_on_and_progress_counts(tmp_path):
  store = _store(tmp_path, n=2)
  lease = store.next_item("alice")
  store.submit("alice", lease.item.id, "unclear", None, lease_token=lease.token,
               submission_id="u")
  assert store.next_item("alice").item.id == "i1"  # alice does not see i0 again
  assert store.next_item("bob").item.id == "i0"  # but i0 is not done: bob gets it
  assert store.progress("alice") == {"items": 2, "done": 0, "yours": 1, "open_for_you": 1}


def test_double_annotation_goes_to_a_second_annotator(tmp_path):
  store = _store(tmp_path, n=2, annotations_per_item=2)
  lease = store.next_item("alice")
  _fix(store, "alice", lease.item.id, lease)
  # Bob gets the item alice finished first (so doubly annotated items complete).
  assert store.next_item("bob").item.id == "i0"
  _fix(store, "bob", "i0")
  assert store.progress("bob")["done"] == 1


def test_concurrent_annotators_and_repeated_submissions(tmp_path):
  """8 threads, each its own annotator, take items and submit every answer twice with
  the same submission id (a double click), against one store file: no item is ever
  leased to two annotators at once, each annotation exists once."""
  store = _store(tmp_path, n=40)
  held: dict[str, str] = {}
  problems: list[str] = []
  lock = threading.Lock()

  def annotate(name: str):
    while True:
      lease = store.next_item(name)
      if lease is None:
        return
      with lock:
        if lease.item.id in held and held[lease.item.id] != name:
          problems.append(f"{lease.item.id} leased to {held[lease.item.id]} and {name}")
        held[lease.item.id] = name
      for _ in range(2):
        _fix(store, name, lease.item.id, lease, sid=f"{name}:{lease.item.id}")

  threads = [threading.Thread(target=annotate, args=(f"a{k}",)) for k in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  annotations = store.annotations()
  assert not problems
  assert sorted(a.item_id for a in annotations) == sorted(f"i{k}" for k in range(40))
  assert store.num_submissions() == 40
  assert all(not a.revision > 1 for a in annotations)


def test_submission_ids_are_scoped_per_annotator(tmp_path):
  store = _store(tmp_path)
  first = _fix(store, "alice", "i0", sid="s1")
  bob = _fix(store, "bob", "i1", sid="s1", text="A green car number 1.")
  assert not bob.duplicate and bob.annotation.corrected == "A green car number 1."
  with pytest.raises(StoreError, match="submission_id 's1' .* item 'i0'"):
    _fix(store, "alice", "i2", sid="s1")
  assert store.annotation("i2", "alice") is None
  # A resent id is answered with what that submission stored, not the current revision.
  store.submit("alice", "i0", "no_hallucination", None, lease_token="", submission_id="s2")
  again = _fix(store, "alice", "i0", sid="s1")
  assert again.duplicate and again.annotation == first.annotation
  assert (again.annotation.verdict, again.annotation.revision) == ("corrected", 1)
  assert store.annotation("i0", "alice").verdict == "no_hallucination"
  assert store.num_submissions() == 3


def test_submit_diffs_outside_the_write_transaction(tmp_path, monkeypatch):
  """The diff costs CPU time; inside BEGIN IMMEDIATE it would hold every annotator's
  writes back for as long."""
  store = _store(tmp_path)
  inside = []
  for name in ("correction_spans", "edit_spans"):
    real = getattr(spans_lib, name)
    monkeypatch.setattr(spans_lib, name, lambda *args, real=real: (
        inside.append(store._connection().in_transaction), real(*args))[1])
  _fix(store, "alice", "i0")
  store.submit("alice", "i1", "corrected", "A blue car number 1.", lease_token="",
               submission_id="e", edits=[((2, 5), (2, 6))])
  assert inside == [False, False]
  assert store.annotation("i1", "alice").chosen_spans == ((2, 6),)


def _log(store):
  with sqlite3.connect(store.path) as db:
    return dict(db.execute("SELECT submission_id, lease_lost FROM submissions"))


def test_a_revision_is_not_late_work(tmp_path):
  clock = Clock()
  store = _store(tmp_path, n=3, lease_seconds=60, clock=clock)
  lease = store.next_item("alice")
  assert not _fix(store, "alice", "i0", lease, sid="first").lease_lost
  store.next_item("alice")  # on to i1; then back (B) to revise i0, without a lease
  revised = store.submit("alice", "i0", "no_hallucination", None, lease_token="",
                         submission_id="revision")
  assert not revised.lease_lost and revised.annotation.revision == 2
  # Truly late: a first annotation after the lease expired.
  clock.now += 61
  assert _fix(store, "alice", "i1", sid="late").lease_lost
  assert _log(store) == {"first": 0, "revision": 0, "late": 1}


_SCHEMA_WITH_GLOBAL_IDS = """
CREATE TABLE items (
  id TEXT PRIMARY KEY, image TEXT NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL,
  meta TEXT NOT NULL, added_at REAL NOT NULL);
CREATE TABLE leases (
  item_id TEXT PRIMARY KEY REFERENCES items(id), annotator TEXT NOT NULL,
  token TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE annotations (
  item_id TEXT NOT NULL REFERENCES items(id), annotator TEXT NOT NULL,
  verdict TEXT NOT NULL, original TEXT NOT NULL, corrected TEXT,
  rejected_spans TEXT NOT NULL, chosen_spans TEXT NOT NULL,
  created_at REAL NOT NULL, updated_at REAL NOT NULL, revision INTEGER NOT NULL,
  PRIMARY KEY (item_id, annotator));
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE submissions (
  submission_id TEXT PRIMARY KEY, item_id TEXT NOT NULL, annotator TEXT NOT NULL,
  verdict TEXT NOT NULL, corrected TEXT, lease_lost INTEGER NOT NULL,
  revision INTEGER NOT NULL, received_at REAL NOT NULL);
INSERT INTO items VALUES ('i0', '0.png', 'Describe.', 'A red car.', '{}', 1.0);
INSERT INTO annotations VALUES ('i0', 'alice', 'no_hallucination', 'A red car.',
  'A red car.', '[]', '[]', 2.0, 3.0, 2);
INSERT INTO submissions VALUES ('s1', 'i0', 'alice', 'corrected', 'A blue car.', 0, 1, 2.0);
INSERT INTO submissions VALUES ('s2', 'i0', 'alice', 'no_hallucination', 'A red car.', 1, 2,
  3.0);
"""


def test_a_store_with_global_submission_ids_is_migrated(tmp_path):
  """Stores made before ids were scoped per annotator open with their log intact."""
  path = tmp_path / "old.sqlite"
  with sqlite3.connect(path) as db:
    db.executescript(_SCHEMA_WITH_GLOBAL_IDS)
  store = AnnotationStore(path)
  assert store.num_submissions() == 2
  first = store.submit("alice", "i0", "corrected", "A blue car.", lease_token="",
                       submission_id="s1")
  assert first.duplicate and first.annotation.revision == 1
  assert (first.annotation.corrected, first.annotation.rejected_spans) == (
      "A blue car.", ((2, 5),))  # the diff, as when it was submitted
  # A revision keeps its flag as it was logged.
  assert store.submit("alice", "i0", "no_hallucination", None, lease_token="",
                      submission_id="s2").lease_lost
  assert not store.submit("bob", "i0", "unclear", None, lease_token="",
                          submission_id="s1").duplicate
  assert AnnotationStore(path).num_submissions() == 3  # and it opens again


def _labeled(store, labeler, clock):
  """`labeler` annotates every item it is handed (the `label` stage's way): i0 and i2
  corrected, i1 found clean; returns the ids in the order it got them."""
  got = []
  while (lease := store.next_item(labeler)) is not None:
    got.append(lease.item.id)
    if lease.item.id == "i1":
      store.submit(labeler, "i1", "no_hallucination", None, lease_token=lease.token,
                   submission_id=f"{labeler}/i1")
    else:
      _fix(store, labeler, lease.item.id, lease, sid=f"{labeler}/{lease.item.id}",
           text=store.item(lease.item.id).answer.replace("red ", ""))
    clock.now += 1
  return got


def test_ai_proposals_leave_people_s_queue_as_it_was(tmp_path):
  """An AI labeler's annotations finish nothing and reorder nothing for people; the
  labeler gets every item it has not annotated, whatever people did; `proposal` is the
  latest AI annotation, and a person's own annotation is stored beside it."""
  clock = Clock()
  store = _store(tmp_path, clock=clock)
  _fix(store, "alice", "i2")  # a person first: the labeler still gets i2
  clock.now += 1
  assert sorted(_labeled(store, "ai:small", clock)) == ["i0", "i1", "i2"]
  assert store.progress("ai:small") == {"items": 3, "done": 1, "yours": 3, "open_for_you": 0}
  assert store.progress("bob") == {"items": 3, "done": 1, "yours": 0, "open_for_you": 2}
  assert store.next_item("bob").item.id == "i0"  # as without the labeler
  assert store.proposal("i0").annotator == "ai:small"
  assert store.proposal("i1").verdict == "no_hallucination"
  # Bob holds i0: a labeler waits for it, and its progress says one is left.
  assert sorted(_labeled(store, "ai:large", clock)) == ["i1", "i2"]
  assert store.progress("ai:large")["open_for_you"] == 1
  assert store.proposal("i0").annotator == "ai:small"
  _fix(store, "bob", "i0", text="A red truck number 0.")
  assert _labeled(store, "ai:large", clock) == ["i0"]
  assert [store.proposal(i).annotator for i in ("i0", "i1", "i2")] == ["ai:large"] * 3
  clock.now += 1
  _fix(store, "ai:small", "i0", sid="again", text="A car number 0!")  # a revision: newest
  assert store.proposal("i0").corrected == "A car number 0!"
  assert store.annotation("i0", "ai:small").corrected == "A car number 0!"
  assert store.annotation("i0", "bob").corrected == "A red truck number 0."
  assert store.progress("bob")["done"] == 2
  assert store.proposal("nope") is None
  unclear_only = _store(tmp_path / "u", n=1)
  unclear_only.submit("ai:x", "i0", "unclear", None, lease_token="", submission_id="u")
  assert unclear_only.proposal("i0") is None  # not a proposal


def test_an_ai_labeler_proposes_without_a_lease_and_a_rerun_is_a_duplicate(tmp_path):
  store = AnnotationStore(tmp_path / "s.sqlite")
  store.add_items([Item("i1", "a.png", "Describe.", "A dog and a cat.")])
  human = store.next_item("alice")  # a person holds the item: the labeler is not blocked
  first = store.propose("ai:labeler", "i1", "corrected", "A dog.")
  assert not first.duplicate and not first.lease_lost
  assert first.annotation.rejected_spans == ((6, 15),)  # "and a cat"
  again = store.propose("ai:labeler", "i1", "corrected", "A dog.")
  assert again.duplicate and again.annotation.revision == 1
  revised = store.propose("ai:labeler", "i1", "no_hallucination", None)
  assert not revised.duplicate and revised.annotation.revision == 2
  assert store.next_item("alice").item.id == human.item.id  # the person's lease stands
  with pytest.raises(StoreError, match="not an AI labeler"):
    store.propose("alice", "i1", "no_hallucination", None)
