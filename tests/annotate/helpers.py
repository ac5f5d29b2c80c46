"""What the annotation tests share: small images, answers, a live server."""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
from PIL import Image


def png(seed: int, size=(40, 60)) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  return buffer.getvalue()


ANSWERS = (
    ("coco/1.png", "There is a red car next to a dog on the street."),
    ("coco/2.png", "A cat sleeps on a sofa. <script>window.__pwned = 1</script>"
                   "<img src=x onerror=\"window.__pwned = 2\">"),
    ("coco/3.png", "Two people ride bicycles past a blue house."),
)


class LiveServer:
  """uvicorn serving `app` on a free loopback port, in a daemon thread."""

  def __init__(self, app):
    import uvicorn
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      self.port = s.getsockname()[1]
    self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                log_level="warning"))
    self.thread = threading.Thread(target=self.server.run, daemon=True)
    self.thread.start()
    deadline = time.monotonic() + 20
    while not self.server.started:
      if time.monotonic() > deadline:
        raise RuntimeError("the annotation server did not start")
      time.sleep(0.05)
    self.url = f"http://127.0.0.1:{self.port}/"

  def stop(self):
    self.server.should_exit = True
    self.thread.join(10)
