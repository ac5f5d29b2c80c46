"""The correction-annotation web app (FastAPI), served by uvicorn.

  python -m rlhfv_jax.annotate --store annotations.sqlite --images DIR [--port 8765]

One page (`page.html`, plain HTML/CSS/JS, no build step) and a small JSON API over an
`AnnotationStore`:

  GET  /                      the page
  POST /api/next              {annotator} -> the item leased to it (or null) + progress
  POST /api/submit            {annotator, item_id, verdict, corrected, lease_token,
                               submission_id} -> the stored annotation + progress
  POST /api/spans             {original, corrected} -> the corrected segments' spans
                               (the page highlights them as the annotator types)
  GET  /api/annotation        ?annotator=&item_id= -> an item and its annotation (revise)
  GET  /api/progress          ?annotator=
  GET  /api/image/{item_id}   the item's image, read from under the image root only

Safety: texts reach the page as JSON and are inserted as text, never as HTML; an
item's image path is resolved under the image root (absolute paths, ".." and symlinks
out of the root are refused); request bodies over `max_body_bytes` get 413; malformed
requests get 422 naming the field, refused ones (unknown item, bad verdict) 400/404.
With a token every request must carry it (header ``X-Annotate-Token`` or
``?token=``, which the printed URL holds); without one the server must be on loopback.
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
import secrets
import urllib.parse
from typing import Literal, Optional

import fastapi
import pydantic
from fastapi import responses

from rlhfv_jax.annotate import export as export_lib
from rlhfv_jax.annotate import spans as spans_lib
from rlhfv_jax.annotate import store as store_lib

PAGE = pathlib.Path(__file__).with_name("page.html")
TOKEN_HEADER = "X-Annotate-Token"
DEFAULT_MAX_BODY_BYTES = 64 * 1024
MAX_TEXT = 20_000  # characters of an answer or correction


class BodyLimit:
  """ASGI middleware: 413 for a request body over `limit` bytes, declared or streamed.

  The body is read here, up to the limit, and handed on whole: the app never sees a
  partial body (FastAPI would report a cut-off stream as a JSON parse error)."""

  def __init__(self, app, limit: int):
    self.app, self.limit = app, limit

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    declared = dict(scope.get("headers", ())).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > self.limit:
      return await self._refuse(send)
    body, more = b"", True
    while more:
      message = await receive()
      if message["type"] != "http.request":  # the client went away
        return
      body += message.get("body", b"")
      more = message.get("more_body", False)
      if len(body) > self.limit:
        return await self._refuse(send)
    delivered = False

    async def replay():
      nonlocal delivered
      if not delivered:
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}
      return await receive()

    await self.app(scope, replay, send)

  async def _refuse(self, send):
    body = json.dumps({"detail": f"request body over {self.limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


Annotator = pydantic.constr(strip_whitespace=True, min_length=1, max_length=64)
ItemId = pydantic.constr(min_length=1, max_length=512)
Text = pydantic.constr(max_length=MAX_TEXT)


class NextRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")
  annotator: Annotator


class SubmitRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")
  annotator: Annotator
  item_id: ItemId
  verdict: Literal["corrected", "no_hallucination", "unclear"]
  corrected: Optional[Text] = None
  lease_token: pydantic.constr(max_length=64) = ""
  submission_id: pydantic.constr(min_length=1, max_length=128)


class SpansRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")
  original: Text
  corrected: Text


def _item_json(item: store_lib.Item) -> dict:
  return {"id": item.id, "prompt": item.prompt, "answer": item.answer,
          "image_url": "/api/image/" + urllib.parse.quote(item.id, safe="")}


def is_loopback(host: str) -> bool:
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def access_token(host: str, token: Optional[str]) -> Optional[str]:
  """The token a server on `host` requires: the given one, else a new random one when
  the host is reachable from other machines, else none (loopback only)."""
  if token is None and not is_loopback(host):
    return secrets.token_urlsafe(24)
  return token


def make_app(store: store_lib.AnnotationStore, image_root: str | pathlib.Path, *,
             token: Optional[str] = None,
             max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> BodyLimit:
  """The ASGI app (module docstring): the FastAPI app behind the body-size limit.
  `token`: required on every request when set."""
  app = fastapi.FastAPI(title="rlhfv_jax annotate", docs_url=None, redoc_url=None,
                        openapi_url=None)
  _add_guards(app, token)
  _add_page_routes(app)
  _add_api_routes(app, store)
  _add_image_route(app, store, pathlib.Path(image_root))
  return BodyLimit(app, max_body_bytes)


def _add_guards(app: fastapi.FastAPI, token: Optional[str]) -> None:
  """The token check and safety headers on every request; store refusals as 400/404."""

  @app.middleware("http")
  async def require_token(request: fastapi.Request, call_next):
    if token is not None:
      given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
      if not secrets.compare_digest(given.encode(), token.encode()):
        return responses.JSONResponse({"detail": "missing or wrong token"}, status_code=401)
    response = await call_next(request)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response

  @app.exception_handler(store_lib.StoreError)
  async def refused(_, error: store_lib.StoreError):
    status = 404 if isinstance(error, store_lib.UnknownItemError) else 400
    return responses.JSONResponse({"detail": str(error)}, status_code=status)


def _add_page_routes(app: fastapi.FastAPI) -> None:
  """GET / (the page) and GET /healthz."""

  @app.get("/", response_class=responses.HTMLResponse)
  def page():
    return responses.HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={
        "Content-Security-Policy": "default-src 'self'; img-src 'self'; "
                                   "style-src 'self' 'unsafe-inline'; "
                                   "script-src 'self' 'unsafe-inline'"})

  @app.get("/healthz")
  def healthz():
    return {"ok": True}


def _add_api_routes(app: fastapi.FastAPI, store: store_lib.AnnotationStore) -> None:
  """The JSON API over `store`: next, submit, spans, annotation, progress."""

  @app.post("/api/next")
  def next_item(request: NextRequest):
    lease = store.next_item(request.annotator)
    item = None if lease is None else dict(_item_json(lease.item), lease_token=lease.token,
                                           lease_expires_at=lease.expires_at)
    return {"item": item, "progress": store.progress(request.annotator)}

  @app.post("/api/submit")
  def submit(request: SubmitRequest):
    result = store.submit(request.annotator, request.item_id, request.verdict,
                          request.corrected, lease_token=request.lease_token,
                          submission_id=request.submission_id)
    return {"annotation": result.annotation.to_json(), "duplicate": result.duplicate,
            "lease_lost": result.lease_lost, "progress": store.progress(request.annotator)}

  @app.post("/api/spans")
  def spans(request: SpansRequest):
    rejected, chosen = spans_lib.correction_spans(request.original, request.corrected)
    return {"rejected_spans": rejected, "chosen_spans": chosen}

  @app.get("/api/annotation")
  def annotation(annotator: Annotator, item_id: ItemId):
    item = store.item(item_id)
    found = store.annotation(item_id, annotator)
    return {"item": _item_json(item), "annotation": None if found is None else found.to_json()}

  @app.get("/api/progress")
  def progress(annotator: Annotator):
    return store.progress(annotator)


def _add_image_route(app: fastapi.FastAPI, store: store_lib.AnnotationStore,
                     image_root: pathlib.Path) -> None:
  """GET /api/image/{item_id}: the item's image, from under `image_root` only."""

  @app.get("/api/image/{item_id:path}")
  def image(item_id: str):
    item = store.item(item_id)
    path = export_lib.image_file(image_root, item.image)
    if not path.is_file():
      raise fastapi.HTTPException(404, f"item {item_id!r}: image {item.image!r} not found")
    return responses.FileResponse(path)


def serve(store: store_lib.AnnotationStore, image_root: str | pathlib.Path, *,
          host: str = "127.0.0.1", port: int = 8765, token: Optional[str] = None,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
  """Runs the app until interrupted, after printing its URL. A server reachable from
  other machines always has a token (a new random one unless given)."""
  import uvicorn
  token = access_token(host, token)
  url_host = f"[{host}]" if ":" in host else host
  url = f"http://{url_host}:{port}/" + (f"?token={token}" if token else "")
  print(f"annotation app: {url}", flush=True)
  uvicorn.run(make_app(store, image_root, token=token, max_body_bytes=max_body_bytes),
              host=host, port=port, log_level="warning")
