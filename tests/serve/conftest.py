"""Fixtures of the server's tests: a small collection indexed three ways on one tiny backbone, a
reference `Searcher` to compute expected results, and a live server on loopback."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi", reason="the server needs the [serve] extra")

import uvicorn  # noqa: E402

from slq.backbone import Backbone  # noqa: E402
from slq.data.shapes import write_world  # noqa: E402
from slq.index import Searcher, update_index  # noqa: E402
from slq.retriever import SLQRetriever  # noqa: E402
from slq.serve.app import LOOPBACK_NAMES, create_app  # noqa: E402
from slq.tiny import build_tiny_model  # noqa: E402

NOTES = ["the kettle is on the stove", "a red bicycle leans on the fence", "rain is expected tomorrow",
         "the library closes at six", "three green apples in a bowl", "a blue door with a brass knocker",
         "the train to the coast leaves at noon", "a yellow umbrella by the door"]
MAX_UPLOAD_MB = 1.0  # small, so that an oversized upload is cheap to send


class LiveServer:
    """uvicorn serving `app` on a free loopback port, in a background thread of this process."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    limit_concurrency=64))
        self.thread = threading.Thread(target=self.server.run, name="slq-test-server", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def collection(tmp_path_factory) -> SimpleNamespace:
    """Images of coloured shapes indexed with two adapters (shapes, shapes-alt) and short texts
    (notes), all on one tiny random backbone, loaded once."""
    root = tmp_path_factory.mktemp("serve")
    backbone_dir = build_tiny_model("qwen2_vl", root / "backbone", seed=0)
    model = Backbone.load(backbone_dir)
    for seed, name in enumerate(("adapter-a", "adapter-b")):
        SLQRetriever.fresh(model, num_queries=4, seed=seed).save(root / name)
    splits = write_world(root / "world", n_train=32, n_val=1, n_test=2, seed=0, progress=False)
    notes = root / "notes" / "notes.jsonl"
    notes.parent.mkdir()
    notes.write_text("".join(json.dumps({"text": t, "captions": [f"note {i}"]}) + "\n" for i, t in enumerate(NOTES)))

    def load(backbone, adapter):  # every index on the model already in memory
        return SLQRetriever.on_backbone(model, adapter)

    built = {}
    plan = (("shapes", splits["train"], "adapter-a"), ("shapes-alt", splits["train"], "adapter-b"),
            ("notes", notes, "adapter-a"))
    for name, source, adapter in plan:
        update_index(root / "indexes" / name, source, backbone=backbone_dir, adapter=root / adapter,
                     load_retriever=load, progress=False)
        built[name] = root / "indexes" / name
    test_images = sorted((root / "world" / "images" / "test").glob("*.png"))
    train_images = sorted((root / "world" / "images" / "train").glob("*.png"))
    return SimpleNamespace(root=root, backbone=backbone_dir, indexes=built, world=root / "world", notes=len(NOTES),
                           test_images=test_images, train_images=train_images)


@pytest.fixture(scope="session")
def reference(collection) -> Searcher:
    """A Searcher of its own over the same indexes: what the server's answers must equal."""
    searcher = Searcher.open(list(collection.indexes.values()))
    yield searcher
    searcher.close()


@pytest.fixture(scope="session")
def server(collection) -> LiveServer:
    searcher = Searcher.open(list(collection.indexes.values()))
    app = create_app(searcher, max_upload_mb=MAX_UPLOAD_MB, allowed_hosts=LOOPBACK_NAMES)
    with LiveServer(app) as live:
        live.searcher = searcher
        yield live
    searcher.close()


@pytest.fixture(scope="session")
def keyed_server(server) -> LiveServer:
    """The same indexes behind a server with an API key (`keyed_server.key`)."""
    app = create_app(server.searcher, max_upload_mb=MAX_UPLOAD_MB, allowed_hosts=LOOPBACK_NAMES,
                     api_key="sk-slq-page-test")
    with LiveServer(app) as live:
        live.key = "sk-slq-page-test"
        yield live
