"""Fixtures of the annotation tests: an image folder, a store with a few answers, and a
live server (uvicorn in a thread) for the browser test."""

from __future__ import annotations

import pytest

from rlhfv_jax.annotate import server as server_lib
from rlhfv_jax.annotate import store as store_lib

from .helpers import ANSWERS, LiveServer, png


@pytest.fixture
def image_root(tmp_path):
  root = tmp_path / "images"
  (root / "coco").mkdir(parents=True)
  for i in range(1, 4):
    (root / "coco" / f"{i}.png").write_bytes(png(i))
  (tmp_path / "secret.txt").write_text("not an image")
  return root


@pytest.fixture
def store(tmp_path, image_root):
  store = store_lib.AnnotationStore(tmp_path / "annotations.sqlite")
  store.image_root = image_root
  store.add_items(store_lib.Item(f"item{i}", image, "Describe the image.", answer,
                                 {"temperature": 0.7, "sample": 0})
                  for i, (image, answer) in enumerate(ANSWERS))
  return store


@pytest.fixture
def live_server(store, image_root):
  server = LiveServer(server_lib.make_app(store, image_root))
  yield server
  server.stop()
