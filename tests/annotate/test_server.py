"""The web app's API (FastAPI TestClient): flow, validation, limits, token, image root."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from rlhfv_jax.annotate import __main__ as cli
from rlhfv_jax.annotate import server as server_lib
from rlhfv_jax.annotate import store as store_lib

from .helpers import ANSWERS

# The address the app is bound to by default: requests name it (the Host check).
LOCAL = "http://127.0.0.1:8765"


def _local(app):
  """A client whose requests name the loopback host the app is bound to."""
  return TestClient(app, base_url=LOCAL)


@pytest.fixture
def client(store, image_root):
  return _local(server_lib.make_app(store, image_root))


def test_next_submit_spans_progress(client):
  got = client.post("/api/next", json={"annotator": "alice"}).json()
  item = got["item"]
  assert (item["id"], item["answer"]) == ("item0", ANSWERS[0][1])
  assert got["progress"] == {"items": 3, "done": 0, "yours": 0, "open_for_you": 3}
  image = client.get(item["image_url"])
  assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
  spans = client.post("/api/spans", json={"original": "a red car", "corrected": "a blue car"})
  assert spans.json() == {"rejected_spans": [[2, 5]], "chosen_spans": [[2, 6]]}
  body = {"annotator": "alice", "item_id": "item0", "verdict": "corrected",
          "corrected": ANSWERS[0][1].replace("red", "blue"),
          "lease_token": item["lease_token"], "submission_id": "sub-1"}
  first = client.post("/api/submit", json=body).json()
  assert first["annotation"]["rejected_spans"] == [[11, 14]]
  assert (first["duplicate"], first["lease_lost"]) == (False, False)
  assert first["progress"]["yours"] == 1
  assert client.post("/api/submit", json=body).json()["duplicate"] is True
  again = client.get("/api/annotation", params={"annotator": "alice", "item_id": "item0"})
  assert again.json()["annotation"]["corrected"] == body["corrected"]
  assert client.get("/api/progress", params={"annotator": "alice"}).json()["done"] == 1


def test_bad_requests_get_clear_4xx(client):
  missing = client.post("/api/submit", json={"item_id": "item0", "verdict": "unclear",
                                             "submission_id": "x"})
  assert missing.status_code == 422
  assert any(e["loc"][-1] == "annotator" for e in missing.json()["detail"])
  bad_verdict = client.post("/api/submit", json={"annotator": "a", "item_id": "item0",
                                                 "verdict": "maybe", "submission_id": "x"})
  assert bad_verdict.status_code == 422 and "verdict" in str(bad_verdict.json())
  extra = client.post("/api/next", json={"annotator": "a", "admin": True})
  assert extra.status_code == 422
  unknown = client.post("/api/submit", json={"annotator": "a", "item_id": "nope",
                                             "verdict": "unclear", "submission_id": "x"})
  assert unknown.status_code == 404 and "no item 'nope'" in unknown.json()["detail"]
  unchanged = client.post("/api/submit", json={
      "annotator": "a", "item_id": "item0", "verdict": "corrected",
      "corrected": ANSWERS[0][1], "submission_id": "x"})
  assert unchanged.status_code == 400 and "equals the answer" in unchanged.json()["detail"]
  assert client.get("/api/image/nope").status_code == 404
  assert client.post("/api/next", content=b"{not json",
                     headers={"content-type": "application/json"}).status_code == 422


def test_request_bodies_are_size_limited(store, image_root):
  client = _local(server_lib.make_app(store, image_root, max_body_bytes=1000))
  big = {"original": "x" * 600, "corrected": "y" * 600}
  assert client.post("/api/spans", json=big).status_code == 413
  # A streamed body without Content-Length is counted as it arrives.
  chunks = (b'{"original": "' + b"x" * 400, b"y" * 400, b"z" * 400 + b'", "corrected": ""}')
  streamed = client.post("/api/spans", content=iter(chunks),
                         headers={"content-type": "application/json"})
  assert streamed.status_code == 413
  assert client.post("/api/spans", json={"original": "a", "corrected": "b"}).status_code == 200


def test_images_are_served_from_under_the_root_only(store, image_root, tmp_path):
  # A symlink inside the root that points out of it is refused like "..".
  (image_root / "coco" / "link.png").symlink_to(tmp_path / "secret.txt")
  store.add_items([store_lib.Item("sneaky", "coco/link.png", "Describe.", "An answer."),
                   store_lib.Item("gone", "coco/missing.png", "Describe.", "An answer.")])
  client = _local(server_lib.make_app(store, image_root))
  refused = client.get("/api/image/sneaky")
  assert refused.status_code == 400 and "outside the image root" in refused.json()["detail"]
  assert client.get("/api/image/gone").status_code == 404
  with pytest.raises(store_lib.StoreError):
    store.add_items([store_lib.Item("up", "../secret.txt", "Describe.", "An answer.")])


def test_token_protects_every_route(store, image_root):
  client = _local(server_lib.make_app(store, image_root, token="s3cret"))
  assert client.get("/").status_code == 401
  assert client.post("/api/next", json={"annotator": "a"}).status_code == 401
  assert client.get("/api/image/item0", params={"token": "wrong"}).status_code == 401
  assert client.get("/", params={"token": "s3cret"}).status_code == 200
  assert client.get("/api/image/item0", params={"token": "s3cret"}).status_code == 200
  ok = client.post("/api/next", json={"annotator": "a"},
                   headers={server_lib.TOKEN_HEADER: "s3cret"})
  assert ok.status_code == 200


def test_exposed_servers_always_have_a_token():
  assert server_lib.access_token("127.0.0.1", None) is None
  assert server_lib.access_token("localhost", None) is None
  assert server_lib.access_token("::1", None) is None
  generated = server_lib.access_token("0.0.0.0", None)
  assert generated and len(generated) >= 24
  assert server_lib.access_token("0.0.0.0", None) != generated
  assert server_lib.access_token("10.1.2.3", "mine") == "mine"
  assert cli._parser("serve").parse_args(["--store", "s"]).host == "127.0.0.1"


def test_the_page_inserts_text_never_html(client):
  page = client.get("/").text + client.get("/page.js").text
  assert "innerHTML" not in page and "insertAdjacentHTML" not in page
  assert "outerHTML" not in page and "document.write" not in page
  assert "textContent" in page
  assert "script-src" in client.get("/").headers["content-security-policy"]


def test_the_page_has_no_inline_script(store, image_root):
  """The page's script is a file the app serves, so a CSP can forbid inline script."""
  client = _local(server_lib.make_app(store, image_root))
  page = client.get("/").text
  scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, flags=re.S | re.I)
  assert scripts == [(' src="/page.js" defer', "")]
  assert not re.search(r"<[^>]*\son[a-z]+\s*=", page, flags=re.I)  # no inline handlers
  assert "javascript:" not in page
  script = client.get("/page.js")
  assert script.status_code == 200
  assert script.headers["content-type"].startswith("application/javascript")
  assert "addEventListener" in script.text and "<" not in script.text.split("\n", 1)[0]
  # With a token the script's URL carries it, since every request needs it.
  guarded = _local(server_lib.make_app(store, image_root, token="s3 cr&t"))
  page = guarded.get("/", params={"token": "s3 cr&t"}).text
  assert 'src="/page.js?token=s3%20cr%26t"' in page
  assert guarded.get("/page.js?token=s3%20cr%26t").status_code == 200
  assert guarded.get("/page.js").status_code == 401


def _between(text, first, after):
  return [text.index(first), text.index(after)]


def test_submitted_edits_are_checked_and_their_spans_stored(client, store):
  """The page sends the spans of the edits the annotator made; the server stores them
  (the diff would mark more), after checking that they make the correction."""
  original = "A red car waits at a traffic light while two dogs play on the sidewalk."
  corrected = "A red car is parked while a dog plays on the sidewalk."
  store.add_items([store_lib.Item("light", "coco/1.png", "Describe.", original),
                   store_lib.Item("zh", "coco/2.png", "Describe.",
                                  "一只黑色的猫坐在桌子上。")])
  edits = [{"rejected": _between(original, "waits", " while"),
            "chosen": _between(corrected, "is", " while")},
           {"rejected": _between(original, "two", " on"),
            "chosen": _between(corrected, "a dog", " on")}]
  body = {"annotator": "alice", "item_id": "light", "verdict": "corrected",
          "corrected": corrected, "submission_id": "s1", "edits": edits}
  got = client.post("/api/submit", json=body)
  assert got.status_code == 200, got.text
  annotation = got.json()["annotation"]
  assert [original[s:e] for s, e in annotation["rejected_spans"]] == [
      "waits at a traffic light", "two dogs play"]
  assert [corrected[s:e] for s, e in annotation["chosen_spans"]] == ["is parked", "a dog plays"]
  # Offsets count code points, as Python does (the page converts its UTF-16 offsets).
  zh = client.post("/api/submit", json={
      "annotator": "alice", "item_id": "zh", "verdict": "corrected",
      "corrected": "一只白色的猫坐在桌子上。", "submission_id": "s2",
      "edits": [{"rejected": [2, 3], "chosen": [2, 3]}]})
  assert zh.json()["annotation"]["rejected_spans"] == [[2, 3]]
  # Edits that do not turn the answer into the correction are refused, naming why.
  for bad, message in (
      ([{"rejected": [10, 34], "chosen": [10, 99]}], "edit 0: a span outside its text"),
      ([edits[0], edits[0]], "edit 1: overlaps"),
      (edits[:1], "differ after the last edit"),
      ([{"rejected": [10, 34], "chosen": [10, 15]}, edits[1]], "edit 1: the texts differ")):
    refused = client.post("/api/submit", json=dict(body, annotator="bob", submission_id="s3",
                                                   edits=bad))
    assert refused.status_code == 400 and message in refused.json()["detail"], refused.text
  assert store.annotation("light", "bob") is None
  malformed = client.post("/api/submit", json=dict(body, submission_id="s4",
                                                   edits=[{"rejected": [-1, 2]}]))
  assert malformed.status_code == 422 and "edits" in str(malformed.json())


@pytest.mark.slow
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_command_line_serves_and_prints_its_url(store, image_root, host):
  """`python -m rlhfv_jax.annotate` prints the URL; on a non-loopback address the URL holds
  a generated token, and requests without it are refused."""
  import socket
  import subprocess
  import sys
  import time
  import urllib.error
  import urllib.request

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen([sys.executable, "-m", "rlhfv_jax.annotate", "--store",
                           str(store.path), "--host", host, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    line = proc.stdout.readline()
    assert line.startswith(f"annotation app: http://{host}:{port}/"), line
    url = line.split(": ", 1)[1].strip().replace(host, "127.0.0.1")
    assert ("?token=" in url) == (host != "127.0.0.1")
    deadline = time.monotonic() + 20
    while True:
      try:
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        break
      except (urllib.error.URLError, ConnectionError):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    assert "RLHF-V corrections" in page
    if host != "127.0.0.1":
      with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
  finally:
    proc.terminate()
    proc.wait(10)


def test_an_empty_token_is_refused_at_start(store, image_root, monkeypatch):
  """An empty token would equal the empty token a request sends: no protection."""
  import uvicorn
  for host in ("0.0.0.0", "10.1.2.3", "127.0.0.1"):
    for token in ("", "  ", "\t\n"):
      with pytest.raises(ValueError, match="--token is empty"):
        server_lib.access_token(host, token)
  with pytest.raises(ValueError, match="empty"):
    server_lib.make_app(store, image_root, token=" ")
  started = []
  monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: started.append(args))
  with pytest.raises(SystemExit, match="--token is empty"):
    cli.main(["--store", str(store.path), "--host", "0.0.0.0", "--token", ""])
  assert not started


def _json_post(client, url, body):
  # json.dumps writes a lone surrogate as the escape "\ud800", as a client could.
  return client.post(url, content=json.dumps(body),
                     headers={"content-type": "application/json"})


def test_lone_surrogates_get_422_naming_the_field(client):
  bad = "\ud800"
  submit = {"annotator": "alice", "item_id": "item0", "verdict": "corrected",
            "corrected": "A fix.", "lease_token": "", "submission_id": "s1"}
  cases = [("/api/next", {"annotator": bad}, "annotator")]
  cases += [("/api/submit", dict(submit, **{field: bad}), field) for field in submit]
  cases += [("/api/spans", dict({"original": "a", "corrected": "b"}, **{field: "x" + bad}),
             field) for field in ("original", "corrected")]
  for url, body, field in cases:
    got = _json_post(client, url, body)
    assert got.status_code == 422, (url, field, got.text)
    detail = got.json()["detail"]
    assert any(error["loc"][-1] == field for error in detail), (url, field, detail)
    assert all("input" not in error for error in detail)
  # In a key the body itself is what is invalid.
  got = _json_post(client, "/api/next", {"annotator": "alice", bad: 1})
  assert got.status_code == 422 and got.json()["detail"][0]["loc"] == ["body"]
  assert "unicode" in got.json()["detail"][0]["msg"]
  # A refused value is never echoed back, however long.
  got = _json_post(client, "/api/spans", {"original": "a", "corrected": "y" * 60_000 + bad})
  assert got.status_code == 422 and "yyyy" not in got.text and len(got.content) < 1000
  assert any(e["loc"][-1] == "corrected" for e in got.json()["detail"])
  # Query parameters and paths decode invalid UTF-8 as U+FFFD: refused, never a 500.
  for url in ("/api/progress?annotator=%ED%A0%80", "/api/image/%ED%A0%80",
              "/api/annotation?annotator=a&item_id=%ED%A0%80"):
    assert client.get(url).status_code in (200, 404), url


def test_long_texts_are_refused_fast_and_the_diff_is_bounded(client):
  long = "word " * 2_400  # 12,000 characters: over the limit
  started = time.monotonic()
  got = client.post("/api/spans", json={"original": long, "corrected": long + "x"})
  assert got.status_code == 422
  assert {e["loc"][-1] for e in got.json()["detail"]} == {"original", "corrected"}
  got = client.post("/api/submit", json={
      "annotator": "alice", "item_id": "item0", "verdict": "corrected", "corrected": long,
      "submission_id": "s1"})
  assert got.status_code == 422 and [e["loc"][-1] for e in got.json()["detail"]] == [
      "corrected"]
  assert time.monotonic() - started < 1.0
  # At the limit, texts whose word diff would take minutes (thousands of equal tokens
  # matched one by one) get their spans in well under a second of diff work.
  half = server_lib.MAX_TEXT // 2
  started = time.monotonic()
  got = client.post("/api/spans", json={"original": "x " * half, "corrected": ". " * half})
  assert got.status_code == 200 and time.monotonic() - started < 5.0
  assert got.json() == {"rejected_spans": [[0, 2 * half - 1]],
                        "chosen_spans": [[0, 2 * half - 1]]}


def _image(kind: str) -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", (8, 6), (200, 10, 10)).save(buffer, kind)
  return buffer.getvalue()


def test_images_are_raster_only_with_their_own_type(store, image_root):
  files = {"coco/a.jpg": _image("JPEG"), "coco/a.gif": _image("GIF"),
           "coco/a.webp": _image("WEBP"), "coco/a.bmp": _image("BMP"),
           "coco/x.svg": b'<svg xmlns="http://www.w3.org/2000/svg">'
                         b'<script>alert(1)</script></svg>',
           "coco/x.html": b"<html><script>alert(1)</script></html>",
           "coco/x.png": b"<html><script>alert(1)</script></html>",  # a lying name
           "coco/jpeg.png": _image("JPEG")}
  for name, data in files.items():
    (image_root / name).write_bytes(data)
  store.add_items([store_lib.Item(name, name, "Describe.", "An answer.") for name in files])
  client = _local(server_lib.make_app(store, image_root))
  for name, kind in (("coco/a.jpg", "jpeg"), ("coco/a.gif", "gif"), ("coco/a.webp", "webp"),
                     ("coco/a.bmp", "bmp"), ("coco/jpeg.png", "jpeg")):
    got = client.get("/api/image/" + name)
    assert got.status_code == 200 and got.content == files[name]
    assert got.headers["content-type"] == f"image/{kind}"  # the decoded format's type
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in got.headers["content-security-policy"]
  for name in ("coco/x.svg", "coco/x.html", "coco/x.png"):
    got = client.get("/api/image/" + name)
    assert got.status_code == 415, (name, got.text)
    assert "not a JPEG, PNG, GIF, WebP or BMP image" in got.json()["detail"]
    assert "<" not in got.text and "script" not in got.text


def _script_sources(policy: str) -> list[str]:
  for directive in policy.split(";"):
    name, *values = directive.split()
    if name == "script-src":
      return values
  return []


def test_every_response_carries_the_security_headers(store, image_root):
  client = _local(server_lib.make_app(store, image_root, token="t", max_body_bytes=1000))
  auth = {server_lib.TOKEN_HEADER: "t"}
  got = {
      "page": client.get("/", headers=auth),
      "next": client.post("/api/next", json={"annotator": "a"}, headers=auth),
      "image": client.get("/api/image/item0", headers=auth),
      "no token": client.get("/api/progress?annotator=a"),
      "unknown item": client.get("/api/image/nope", headers=auth),
      "too big": client.post("/api/spans", json={"original": "x" * 2000, "corrected": ""},
                             headers=auth),
      "invalid": client.post("/api/next", json={}, headers=auth),
      "other host": client.get("/", headers=dict(auth, host="evil.example"))}
  assert [r.status_code for r in got.values()] == [200, 200, 200, 401, 404, 413, 422, 400]
  for what, response in got.items():
    policy = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy, what
    assert "'unsafe-inline'" not in _script_sources(policy), what
    assert response.headers.get("x-frame-options") == "DENY", what
    assert response.headers.get("x-content-type-options") == "nosniff", what
  assert _script_sources(got["page"].headers["content-security-policy"]) == ["'self'"]
  assert "default-src 'none'" in got["next"].headers["content-security-policy"]


def test_the_host_header_must_name_this_server(store, image_root):
  """DNS rebinding: a page of another site whose name now resolves to this machine sends
  that name as Host; only the names and addresses this server is reached at pass."""
  def statuses(hosts, **kwargs):
    client = _local(server_lib.make_app(store, image_root, token="t", **kwargs))
    return {host: client.get("/healthz", headers={"host": host, server_lib.TOKEN_HEADER: "t"}
                             ).status_code for host in hosts}

  loopback = ["127.0.0.1:8765", "127.0.0.1", "localhost:8765", "LOCALHOST.", "[::1]:8765"]
  foreign = ["evil.example:8765", "evil.example", "127.0.0.1.evil.example",
             "localhost.evil.example", "[::1", "127.0.0.1:x", ""]
  assert set(statuses(loopback).values()) == {200}  # bound to 127.0.0.1 by default
  assert set(statuses(foreign).values()) == {400}
  exposed = statuses(["10.1.2.3:8765", "localhost", "10.9.9.9", "evil.example"],
                     host="10.1.2.3")
  assert exposed == {"10.1.2.3:8765": 200, "localhost": 400, "10.9.9.9": 400,
                     "evil.example": 400}
  everywhere = statuses(["10.9.8.7:8765", "[fe80::1]:8765", "localhost", "lab.example:8765",
                         "evil.example"], host="0.0.0.0", allowed_hosts=["Lab.Example"])
  assert everywhere == {"10.9.8.7:8765": 200, "[fe80::1]:8765": 200, "localhost": 200,
                        "lab.example:8765": 200, "evil.example": 400}
  assert set(statuses(["[::1]:8765", "127.0.0.1", "localhost"], host="::1").values()) == {200}
  assert statuses(["10.9.8.7", "evil.example"], host="::") == {"10.9.8.7": 200,
                                                               "evil.example": 400}
  assert cli._parser("serve").parse_args(
      ["--store", "s", "--allowed_host", "a.example", "--allowed_host", "b.example"]
  ).allowed_host == ["a.example", "b.example"]


def test_submission_ids_belong_to_their_annotator(client, store):
  def submit(who, item_id, sid, corrected):
    return client.post("/api/submit", json={
        "annotator": who, "item_id": item_id, "verdict": "corrected", "corrected": corrected,
        "submission_id": sid})

  alice = submit("alice", "item0", "s1", ANSWERS[0][1].replace("red", "blue"))
  bob = submit("bob", "item1", "s1", ANSWERS[1][1].replace("cat", "dog"))
  assert bob.status_code == 200 and bob.json()["duplicate"] is False
  assert bob.json()["annotation"]["corrected"] == ANSWERS[1][1].replace("cat", "dog")
  assert store.annotation("item1", "bob") is not None
  reused = submit("alice", "item2", "s1", ANSWERS[2][1].replace("Two", "Three"))
  assert reused.status_code == 409 and "submission_id 's1'" in reused.json()["detail"]
  assert store.annotation("item2", "alice") is None
  # A resent id gets what that submission stored, not a later revision.
  revised = submit("alice", "item0", "s2", ANSWERS[0][1].replace("red", "green"))
  assert revised.json()["annotation"]["revision"] == 2
  again = submit("alice", "item0", "s1", ANSWERS[0][1].replace("red", "blue"))
  assert again.json()["duplicate"] is True
  assert again.json()["annotation"] == alice.json()["annotation"]


def test_error_messages_hold_no_absolute_paths(store, image_root, tmp_path):
  (image_root / "coco" / "link.png").symlink_to(tmp_path / "secret.txt")
  (image_root / "coco" / "x.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
  store.add_items([store_lib.Item("sneaky", "coco/link.png", "Describe.", "An answer."),
                   store_lib.Item("gone", "coco/missing.png", "Describe.", "An answer."),
                   store_lib.Item("svg", "coco/x.svg", "Describe.", "An answer.")])
  client = _local(server_lib.make_app(store, image_root))
  refused = [client.get("/api/image/sneaky"), client.get("/api/image/gone"),
             client.get("/api/image/svg"), client.get("/api/image/nope"),
             client.get("/api/annotation", params={"annotator": "a", "item_id": "nope"}),
             client.post("/api/submit", json={"annotator": "a", "item_id": "nope",
                                              "verdict": "unclear", "submission_id": "x"})]
  assert [r.status_code for r in refused] == [400, 404, 415, 404, 404, 404]
  for response in refused:
    for path in {str(tmp_path), str(tmp_path.resolve()), str(store.path.resolve())}:
      assert path not in response.text, response.text
  assert "coco/link.png" in refused[0].json()["detail"]  # the item's own relative path


def test_items_carry_their_ai_proposal_and_ai_names_are_refused(client, store):
  """/api/next and /api/annotation give an item's latest AI proposal (what the page
  pre-fills); a person's submission is their own; the API is for people only."""
  answer = ANSWERS[0][1]
  deleted = answer.index(" next to a dog")
  proposed = answer[:deleted] + answer[deleted + len(" next to a dog"):]
  store.submit("ai:labeler", "item0", "corrected", proposed, lease_token="",
               submission_id="ai/0", edits=[((deleted, deleted + 14), (deleted, deleted))])
  store.submit("ai:labeler", "item1", "no_hallucination", None, lease_token="",
               submission_id="ai/1")
  item = client.post("/api/next", json={"annotator": "alice"}).json()["item"]
  assert item["id"] == "item0"
  proposal = item["proposal"]
  assert proposal.pop("updated_at") > 0
  assert proposal == {"annotator": "ai:labeler", "verdict": "corrected",
                      "corrected": proposed, "rejected_spans": [[deleted + 1, deleted + 14]],
                      "chosen_spans": []}
  body = {"annotator": "alice", "item_id": "item0", "verdict": "corrected",
          "corrected": proposed, "lease_token": item["lease_token"], "submission_id": "a0",
          "edits": [{"rejected": [deleted, deleted + 14], "chosen": [deleted, deleted]}]}
  mine = client.post("/api/submit", json=body).json()["annotation"]
  assert (mine["annotator"], mine["rejected_spans"]) == ("alice", proposal["rejected_spans"])
  assert store.annotation("item0", "ai:labeler").revision == 1  # the AI's stays as it was
  again = client.get("/api/annotation", params={"annotator": "alice", "item_id": "item1"})
  assert again.json()["item"]["proposal"]["verdict"] == "no_hallucination"
  assert again.json()["annotation"] is None
  plain = client.get("/api/annotation", params={"annotator": "alice", "item_id": "item2"})
  assert plain.json()["item"]["proposal"] is None
  for response in (client.post("/api/next", json={"annotator": "ai:me"}),
                   client.post("/api/submit", json=dict(body, annotator=" ai:labeler")),
                   client.get("/api/progress", params={"annotator": "ai:labeler"})):
    assert response.status_code == 422
    assert "kept for AI labelers" in json.dumps(response.json())
  assert store.num_submissions() == 3
