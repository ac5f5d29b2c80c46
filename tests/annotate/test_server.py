"""The web app's API (FastAPI TestClient): flow, validation, limits, token, image root."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from rlhfv_jax.annotate import __main__ as cli
from rlhfv_jax.annotate import server as server_lib
from rlhfv_jax.annotate import store as store_lib

from .helpers import ANSWERS


@pytest.fixture
def client(store, image_root):
  return TestClient(server_lib.make_app(store, image_root))


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
  client = TestClient(server_lib.make_app(store, image_root, max_body_bytes=1000))
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
  client = TestClient(server_lib.make_app(store, image_root))
  refused = client.get("/api/image/sneaky")
  assert refused.status_code == 400 and "outside the image root" in refused.json()["detail"]
  assert client.get("/api/image/gone").status_code == 404
  with pytest.raises(store_lib.StoreError):
    store.add_items([store_lib.Item("up", "../secret.txt", "Describe.", "An answer.")])


def test_token_protects_every_route(store, image_root):
  client = TestClient(server_lib.make_app(store, image_root, token="s3cret"))
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
  page = client.get("/").text
  assert "innerHTML" not in page and "insertAdjacentHTML" not in page
  assert "textContent" in page
  assert "script-src" in client.get("/").headers["content-security-policy"]


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
