"""The correction-annotation web app (FastAPI), served by uvicorn.

  python -m rlhfv_jax.annotate --store annotations.sqlite --images DIR [--port 8765]

One page (`page.html` and its script `page.js`, plain HTML/CSS/JS, no build step) and a
small JSON API over an `AnnotationStore`:

  GET  /                      the page
  GET  /page.js               its script (the page holds no inline script)
  POST /api/next              {annotator} -> the item leased to it (or null) + progress
  POST /api/submit            {annotator, item_id, verdict, corrected, lease_token,
                               submission_id, edits} -> the stored annotation + progress
                               (edits: the annotator's own, whose spans are stored;
                               without them the spans come from the diff)
  POST /api/spans             {original, corrected} -> the corrected segments' spans
                               (the page highlights them as the annotator types)
  GET  /api/annotation        ?annotator=&item_id= -> an item and its annotation (revise)
  GET  /api/progress          ?annotator=
  GET  /api/image/{item_id}   the item's image, read from under the image root only

Every item the API returns carries its AI proposal (`store.AnnotationStore.proposal`:
annotator, verdict, corrected, rejected_spans, chosen_spans, updated_at) or null; the page
pre-fills it and one key accepts it as the annotator's own annotation. Names starting
with "ai:" are the AI labelers' (`store.AI_PREFIX`), which write to the store directly:
the API refuses them (422), so no one passes their work off as the AI's.

Safety: texts reach the page as JSON and are inserted as text, never as HTML; an
item's image path is resolved under the image root (absolute paths, ".." and symlinks
out of the root are refused) and only raster images are served (JPEG, PNG, GIF, WebP,
BMP, as PIL decodes them; others get 415); request bodies over `max_body_bytes` get 413;
texts over `MAX_TEXT` characters and malformed requests get 422 naming the field (never
echoing the input); refused ones (unknown item, bad verdict) 400/404, a submission id
its annotator already used for another item 409. Error messages name items and image
paths relative to the root, never absolute paths. With a token every request must carry
it (header ``X-Annotate-Token`` or ``?token=``, which the printed URL holds); without
one the server must be on loopback; an empty token is refused. A request whose Host
header names another host gets 400 (`HostCheck`: DNS rebinding). Every response carries
a Content-Security-Policy (the page's allows only its own script file; everything else
runs nothing), ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import io
import ipaddress
import json
import pathlib
import secrets
import urllib.parse
from typing import Annotated, Any, Iterable, Literal, Optional

import fastapi
import pydantic
from fastapi import responses
from fastapi.exceptions import RequestValidationError
from PIL import Image
from starlette.datastructures import Headers, MutableHeaders

from rlhfv_jax.annotate import export as export_lib
from rlhfv_jax.annotate import spans as spans_lib
from rlhfv_jax.annotate import store as store_lib

PAGE = pathlib.Path(__file__).with_name("page.html")
PAGE_SCRIPT = pathlib.Path(__file__).with_name("page.js")
TOKEN_HEADER = "X-Annotate-Token"
DEFAULT_MAX_BODY_BYTES = 64 * 1024
# Characters of an answer or a correction. LLaVA's answers (512 new tokens at most) stay
# under about 3,000; the rest is room for corrections that add words. The word diff's
# work is bounded whatever the length (`spans.DIFF_BUDGET`).
MAX_TEXT = 5_000
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# The formats the image route serves (PIL's names): an SVG or HTML file would run its
# script in the app's origin.
RASTER_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                "WEBP": "image/webp", "BMP": "image/bmp"}
# The page may run its own script file only (no inline script) and is never framed;
# every other response (JSON, images, errors) runs nothing if opened as a document.
PAGE_CSP = ("default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
OTHER_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
EMPTY_TOKEN = ("--token is empty: every request would match it. Leave it out (a random "
               "one is made when the host is not loopback) or give a real one")


def host_name(header: Optional[str]) -> Optional[str]:
  """The host a Host header names: lower case, without port, brackets or final dot; None
  when it is missing or malformed."""
  header = (header or "").strip().lower()
  if header.startswith("["):
    name, bracket, port = header[1:].partition("]")
    if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
      return None
  else:
    name, colon, port = header.partition(":")
    if colon and not port.isdigit():
      return None
  return name.rstrip(".") or None


def _address(name: Optional[str]) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
  try:
    return ipaddress.ip_address(name or "")
  except ValueError:
    return None


class HostCheck:
  """Which Host headers a server bound to `host` answers.

  DNS rebinding: a page of another site, whose name its owner made resolve to this
  machine, can reach a server without a token; its requests name that site as Host. The
  allowed hosts: `host` itself and `allowed_hosts` (names the server is reached by); on a
  loopback bind also localhost and every loopback address; on a wildcard bind (0.0.0.0,
  ::) localhost and every address (an address in the URL is never a rebinding, which
  needs a name).
  """

  def __init__(self, host: str, allowed_hosts: Iterable[str] = ()):
    self.names, self.addresses = set(), set()
    for given in (host, *allowed_hosts):
      address = _address(given.strip().strip("[]"))  # "::1" as well as "[::1]"
      if address is not None:
        self.addresses.add(address)
      elif host_name(given) is not None:
        self.names.add(host_name(given))
    bound = _address(host.strip().strip("[]"))
    self.wildcard = bound is not None and bound.is_unspecified
    self.loopback = is_loopback(host.strip().strip("[]"))

  def __call__(self, header: Optional[str]) -> bool:
    name = host_name(header)
    if name is None:
      return False
    address = _address(name)
    if address is None:
      return name in self.names or (name == "localhost" and (self.loopback or self.wildcard))
    return (self.wildcard or address in self.addresses
            or (self.loopback and address.is_loopback))


class Guard:
  """ASGI middleware, outermost: 400 for a Host this server does not answer (`HostCheck`),
  and the security headers (module docstring) on every response, errors included."""

  def __init__(self, app, hosts: HostCheck):
    self.app, self.hosts = app, hosts

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)

    async def send_guarded(message):
      if message["type"] == "http.response.start":
        message = dict(message, headers=list(message.get("headers", ())))
        headers = MutableHeaders(raw=message["headers"])
        for name, value in SECURITY_HEADERS.items():
          headers[name] = value
        headers.setdefault("Content-Security-Policy", OTHER_CSP)
      await send(message)

    if not self.hosts(Headers(scope=scope).get("host")):
      refused = responses.JSONResponse(
          {"detail": "this server does not answer for the host this request names "
                     "(the command line's --allowed_host adds names)"}, status_code=400)
      return await refused(scope, receive, send_guarded)
    await self.app(scope, receive, send_guarded)


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


def _person(name: str) -> str:
  if store_lib.is_ai(name):
    raise ValueError(f"names starting with {store_lib.AI_PREFIX!r} are kept for AI labelers")
  return name


Annotator = Annotated[pydantic.constr(strip_whitespace=True, min_length=1, max_length=64),
                      pydantic.AfterValidator(_person)]
ItemId = pydantic.constr(min_length=1, max_length=512)
Text = pydantic.constr(max_length=MAX_TEXT)


class NextRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")
  annotator: Annotator


class Edit(pydantic.BaseModel):
  """One edit the annotator made: the span of the answer it replaced and the span of the
  correction that replaced it (code points, half-open; either may be empty)."""
  model_config = pydantic.ConfigDict(extra="forbid")
  rejected: tuple[pydantic.NonNegativeInt, pydantic.NonNegativeInt]
  chosen: tuple[pydantic.NonNegativeInt, pydantic.NonNegativeInt]


class SubmitRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")
  annotator: Annotator
  item_id: ItemId
  verdict: Literal["corrected", "no_hallucination", "unclear"]
  corrected: Optional[Text] = None
  lease_token: pydantic.constr(max_length=64) = ""
  submission_id: pydantic.constr(min_length=1, max_length=128)
  edits: Optional[pydantic.conlist(Edit, max_length=MAX_TEXT)] = None


class SpansRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")
  original: Text
  corrected: Text


def _item_json(store: store_lib.AnnotationStore, item: store_lib.Item) -> dict:
  """An item for the page, with its AI proposal (module docstring) or None."""
  proposal = store.proposal(item.id)
  if proposal is not None:
    proposal = {k: v for k, v in proposal.to_json().items()
                if k in ("annotator", "verdict", "corrected", "rejected_spans",
                         "chosen_spans", "updated_at")}
  return {"id": item.id, "prompt": item.prompt, "answer": item.answer,
          "image_url": "/api/image/" + urllib.parse.quote(item.id, safe=""),
          "proposal": proposal}


def is_loopback(host: str) -> bool:
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def access_token(host: str, token: Optional[str]) -> Optional[str]:
  """The token a server on `host` requires: the given one, else a new random one when
  the host is reachable from other machines, else none (loopback only).

  Raises:
    ValueError: an empty or blank token.
  """
  if token is not None and not token.strip():
    raise ValueError(EMPTY_TOKEN)
  if token is None and not is_loopback(host):
    return secrets.token_urlsafe(24)
  return token


def make_app(store: store_lib.AnnotationStore, image_root: str | pathlib.Path, *,
             token: Optional[str] = None, host: str = "127.0.0.1",
             allowed_hosts: Iterable[str] = (),
             max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Guard:
  """The ASGI app (module docstring): the FastAPI app behind the body-size limit and the
  Host check.

  Args:
    store: the annotations.
    image_root: the folder the items' image paths are relative to.
    token: required on every request when set; never empty.
    host: the address the server is bound to; with `allowed_hosts`, which Host headers
      it answers (`HostCheck`).
    allowed_hosts: further names the server is reached by.
    max_body_bytes: the largest request body.
  """
  if token is not None and not token.strip():
    raise ValueError(EMPTY_TOKEN)
  app = fastapi.FastAPI(title="rlhfv_jax annotate", docs_url=None, redoc_url=None,
                        openapi_url=None)
  _add_guards(app, token)
  _add_page_routes(app, token)
  _add_api_routes(app, store)
  _add_image_route(app, store, pathlib.Path(image_root))
  return Guard(BodyLimit(app, max_body_bytes), HostCheck(host, allowed_hosts))


def _printable(part: Any, limit: int = 200) -> Any:
  """`part` of an error message, short and encodable (a lone surrogate as its escape)."""
  if not isinstance(part, str):
    return part
  text = part.encode("utf-8", "backslashreplace").decode("utf-8")
  return text if len(text) <= limit else text[:limit] + "..."


def _add_guards(app: fastapi.FastAPI, token: Optional[str]) -> None:
  """The token check on every request; malformed requests as 422 naming the field, store
  refusals as 400/404/409."""

  @app.middleware("http")
  async def require_token(request: fastapi.Request, call_next):
    if token is not None:
      given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
      if not secrets.compare_digest(given.encode(), token.encode()):
        return responses.JSONResponse({"detail": "missing or wrong token"}, status_code=401)
    return await call_next(request)

  @app.exception_handler(RequestValidationError)
  async def invalid(_, error: RequestValidationError):
    # Where and what, never the input: it may be 64 KiB, or not encodable at all (a lone
    # surrogate), which would turn the 422 into a 500.
    detail = [{"loc": [_printable(part) for part in e.get("loc", ())],
               "msg": _printable(e.get("msg", "")), "type": _printable(e.get("type", ""))}
              for e in error.errors()[:20]]
    return responses.JSONResponse({"detail": detail}, status_code=422)

  @app.exception_handler(store_lib.StoreError)
  async def refused(_, error: store_lib.StoreError):
    status = (404 if isinstance(error, store_lib.UnknownItemError) else
              409 if isinstance(error, store_lib.ConflictError) else 400)
    return responses.JSONResponse({"detail": str(error)}, status_code=status)


def _page_html(token: Optional[str]) -> str:
  """The page; with a token, its script's URL carries it (every request needs it)."""
  html = PAGE.read_text(encoding="utf-8")
  if token:
    html = html.replace('src="/page.js"', 'src="/page.js?token=%s"'
                        % urllib.parse.quote(token, safe=""))
  return html


def _add_page_routes(app: fastapi.FastAPI, token: Optional[str]) -> None:
  """GET / (the page), GET /page.js (its script) and GET /healthz."""

  @app.get("/page.js")
  def page_script():
    return responses.Response(PAGE_SCRIPT.read_text(encoding="utf-8"),
                              media_type="application/javascript; charset=utf-8")

  @app.get("/", response_class=responses.HTMLResponse)
  def page():
    return responses.HTMLResponse(_page_html(token),
                                  headers={"Content-Security-Policy": PAGE_CSP})

  @app.get("/healthz")
  def healthz():
    return {"ok": True}


def _add_api_routes(app: fastapi.FastAPI, store: store_lib.AnnotationStore) -> None:
  """The JSON API over `store`: next, submit, spans, annotation, progress."""

  @app.post("/api/next")
  def next_item(request: NextRequest):
    lease = store.next_item(request.annotator)
    item = None if lease is None else dict(_item_json(store, lease.item),
                                           lease_token=lease.token,
                                           lease_expires_at=lease.expires_at)
    return {"item": item, "progress": store.progress(request.annotator)}

  @app.post("/api/submit")
  def submit(request: SubmitRequest):
    result = store.submit(request.annotator, request.item_id, request.verdict,
                          request.corrected, lease_token=request.lease_token,
                          submission_id=request.submission_id,
                          edits=None if request.edits is None else
                          [(e.rejected, e.chosen) for e in request.edits])
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
    return {"item": _item_json(store, item),
            "annotation": None if found is None else found.to_json()}

  @app.get("/api/progress")
  def progress(annotator: Annotator):
    return store.progress(annotator)


def raster_type(data: bytes) -> Optional[str]:
  """The media type of `data` when PIL decodes it as one of `RASTER_TYPES`, else None."""
  try:
    with Image.open(io.BytesIO(data), formats=tuple(RASTER_TYPES)) as image:
      return RASTER_TYPES.get(image.format)
  except Exception:  # PIL raises many kinds for what it cannot read; all mean "no"
    return None


def _add_image_route(app: fastapi.FastAPI, store: store_lib.AnnotationStore,
                     image_root: pathlib.Path) -> None:
  """GET /api/image/{item_id}: the item's image, from under `image_root` only, if it is a
  raster image, with the type of its decoded format."""

  @app.get("/api/image/{item_id:path}")
  def image(item_id: str):
    item = store.item(item_id)
    path = export_lib.image_file(image_root, item.image)
    name = f"item {item_id!r}: image {item.image!r}"  # relative: no absolute paths
    try:
      with path.open("rb") as f:  # checked and served from one read
        data = f.read(MAX_IMAGE_BYTES + 1)
    except OSError:
      raise fastapi.HTTPException(404, f"{name} not found") from None
    if len(data) > MAX_IMAGE_BYTES:
      raise fastapi.HTTPException(415, f"{name} is over {MAX_IMAGE_BYTES >> 20} MiB")
    media_type = raster_type(data)
    if media_type is None:
      raise fastapi.HTTPException(415, f"{name} is not a JPEG, PNG, GIF, WebP or BMP image")
    return responses.Response(data, media_type=media_type)


def serve(store: store_lib.AnnotationStore, image_root: str | pathlib.Path, *,
          host: str = "127.0.0.1", port: int = 8765, token: Optional[str] = None,
          allowed_hosts: Iterable[str] = (),
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
  """Runs the app until interrupted, after printing its URL. A server reachable from
  other machines always has a token (a new random one unless given); an empty token is
  a ValueError."""
  import uvicorn
  token = access_token(host, token)
  url_host = f"[{host}]" if ":" in host else host
  url = f"http://{url_host}:{port}/" + (f"?token={token}" if token else "")
  print(f"annotation app: {url}", flush=True)
  uvicorn.run(make_app(store, image_root, token=token, host=host,
                       allowed_hosts=allowed_hosts, max_body_bytes=max_body_bytes),
              host=host, port=port, log_level="warning")
