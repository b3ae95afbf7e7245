"""The search server over loopback: answers equal `Searcher`'s, OpenAI-shaped embeddings, several
indexes on one backbone, and every bad request refused with a 4xx while the server goes on serving."""

from __future__ import annotations

import base64
import http.client
import importlib
import io
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from slq.cli import main
from slq.data.images import load_image
from slq.errors import SettingError, SLQError
from slq.index import Searcher, update_index
from slq.retriever import SLQRetriever
from slq.serve.app import create_app, is_loopback, run_server
from slq.tiny import build_tiny_model

QUERIES = ("a red circle", "two blue squares on the left", "a large yellow star", "a small green heart")
KEY = "sk-slq-test-0123456789"
INSTRUCTION = "Find an image that matches the caption:"


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def assert_alive(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def assert_refused(response: httpx.Response, status: int, words: str) -> None:
    """A clear 4xx: the status, JSON with a one-line `detail` that says what is wrong."""
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert re.search(words, detail, re.IGNORECASE), detail


def same_hits(results: list[dict], hits) -> None:
    assert [r["id"] for r in results] == [h.id for h in hits]
    assert np.allclose([r["score"] for r in results], [h.score for h in hits], atol=1e-5)


def raw_request(port: int, method: str, path: str, headers: dict | None = None, body: bytes = b""):
    """A request sent as written (httpx would normalise `..` away); the status and the decoded body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height pixels: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- answers ----------------------------------------------------------------------------------------

def test_healthz_lists_the_indexes_without_local_paths(client, collection):
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert [(s["name"], s["kind"], s["items"]) for s in body["indexes"]] == [
        ("shapes", "images", 32), ("shapes-alt", "images", 32), ("notes", "texts", collection.notes)]
    assert body["limits"] == {"max_upload_mb": 1, "max_image_pixels": 40_000_000, "max_text_chars": 2000, "max_k": 100}
    assert str(collection.root) not in client.get("/healthz").text
    assert client.get("/indexes").json()["indexes"] == body["indexes"]


def test_search_by_text_equals_the_searcher(client, reference, collection):
    for name in ("shapes", "shapes-alt"):
        for query in QUERIES:
            response = client.get("/search", params={"q": query, "k": 8, "index": name})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["index"] == name and body["k"] == 8 and body["ms"] >= 0
            same_hits(body["results"], reference.search(query, k=8, index=name))
            scores = [r["score"] for r in body["results"]]
            assert scores == sorted(scores, reverse=True)
            for result in body["results"]:
                assert not Path(result["path"]).is_absolute() and (collection.world / result["path"]).is_file()
                assert result["image_url"] == f"/items/{name}/{result['id']}/image"
                assert result["captions"] and result["text"] is None
    assert str(collection.root) not in response.text
    default = client.get("/search", params={"q": QUERIES[0]}).json()  # the first index, k=10
    assert default["index"] == "shapes" and len(default["results"]) == 10


def test_search_by_image_and_by_both(client, reference, collection):
    indexed = collection.train_images[5]
    upload = {"image": (indexed.name, indexed.read_bytes(), "image/png")}
    body = client.post("/search", files=upload, data={"k": "5"}).json()
    same_hits(body["results"], reference.search(image=load_image(indexed), k=5))
    assert body["results"][0]["path"] == f"images/train/{indexed.name}"  # an indexed image finds itself first
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)

    query = collection.test_images[0]
    for text in (None, "the same shapes, but red"):
        form = {"k": "6", "index": "shapes-alt", **({"q": text} if text else {})}
        response = client.post("/search", files={"image": ("q.png", query.read_bytes(), "image/png")}, data=form)
        assert response.status_code == 200, response.text
        same_hits(response.json()["results"], reference.search(text, load_image(query), k=6, index="shapes-alt"))
    with_text = client.post("/search", files={"image": ("q.png", query.read_bytes(), "image/png")},
                            data={"q": "a red circle"}).json()["results"]
    image_only = client.post("/search", files={"image": ("q.png", query.read_bytes(), "image/png")}).json()["results"]
    assert [r["score"] for r in with_text] != [r["score"] for r in image_only]  # the text is read beside the image
    text_only = client.post("/search", data={"q": "a red circle", "k": "4"}).json()["results"]
    same_hits(text_only, reference.search("a red circle", k=4))


def test_indexes_with_different_adapters_are_chosen_per_request(client, reference, server):
    assert len({id(r.backbone) for r in server.searcher.retrievers.values()}) == 1  # the model in memory once
    a = client.get("/search", params={"q": QUERIES[1], "index": "shapes"}).json()["results"]
    b = client.get("/search", params={"q": QUERIES[1], "index": "shapes-alt"}).json()["results"]
    assert [r["score"] for r in a] != [r["score"] for r in b]
    same_hits(a, reference.search(QUERIES[1], index="shapes"))
    same_hits(b, reference.search(QUERIES[1], index="shapes-alt"))
    notes = client.get("/search", params={"q": "an umbrella", "index": "notes", "k": 3}).json()["results"]
    same_hits(notes, reference.search("an umbrella", index="notes", k=3))
    assert all(r["text"] and r["image_url"] is None and r["path"] is None for r in notes)


def test_another_backbone_is_refused_at_startup(collection, tmp_path, capsys):
    other = build_tiny_model("qwen2_vl", tmp_path / "other-backbone", seed=1)
    SLQRetriever.from_pretrained(other, num_queries=4).save(tmp_path / "other-adapter")
    update_index(tmp_path / "other", collection.world / "images" / "test", backbone=other,
                 adapter=tmp_path / "other-adapter", progress=False)
    with pytest.raises(SLQError, match="another backbone"):
        Searcher.open([collection.indexes["shapes"], tmp_path / "other"])
    assert main(["serve", str(collection.indexes["shapes"]), str(tmp_path / "other"), "--port", "0"]) == 2
    assert "another backbone" in capsys.readouterr().err


# --- embeddings -----------------------------------------------------------------------------------

def test_embeddings_in_openai_shape(client, reference, collection):
    body = client.post("/v1/embeddings", json={"input": "a red circle", "model": "shapes-alt"}).json()
    assert body["object"] == "list" and body["model"] == "shapes-alt"
    assert body["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0)]
    assert np.allclose(body["data"][0]["embedding"], reference.embed("a red circle", index="shapes-alt"), atol=1e-5)

    image = collection.test_images[1]
    inputs = ["a red circle", data_url(image.read_bytes()), "two hearts"]
    floats = client.post("/v1/embeddings", json={"input": inputs}).json()  # the first index by default
    assert floats["model"] == "shapes" and [d["index"] for d in floats["data"]] == [0, 1, 2]
    expected = [reference.embed("a red circle"), reference.embed(image=load_image(image)),
                reference.embed("two hearts")]
    for got, want in zip(floats["data"], expected):
        assert len(got["embedding"]) == want.shape[0] and np.allclose(got["embedding"], want, atol=1e-5)

    encoded = client.post("/v1/embeddings", json={"input": inputs, "encoding_format": "base64"}).json()
    for as_base64, as_float in zip(encoded["data"], floats["data"]):  # decoded as OpenAI's clients do
        decoded = np.frombuffer(base64.b64decode(as_base64["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.asarray(as_float["embedding"], dtype=np.float32))


def test_embeddings_refusals(client):
    post = lambda body: client.post("/v1/embeddings", json=body)  # noqa: E731
    assert_refused(post({"input": "x", "model": "gpt-4"}), 404, "no index named 'gpt-4'")
    assert_refused(post({"input": [[1, 2, 3]]}), 400, "token arrays are not supported")
    assert_refused(post({"input": []}), 400, "give 1 to")
    assert_refused(post({"input": "  "}), 400, "non-empty string")
    assert_refused(post({"input": "x", "dimensions": 7}), 400, "dimensions")
    assert_refused(post({"input": "x", "encoding_format": "int8"}), 422, "encoding_format")
    assert_refused(post({"input": "data:image/png,abc"}), 400, "base64 data URL")
    assert_refused(post({"input": "data:image/png;base64,@@@"}), 400, "not valid base64")
    assert_refused(post({"input": data_url(b"not an image")}), 400, "cannot read the image")
    assert_refused(post({"input": data_url(png_header(30000, 30000))}), 413, "pixels")
    assert_refused(client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}),
                   422, "not valid JSON")
    assert_alive(client)


# --- files ----------------------------------------------------------------------------------------

def test_item_images_are_served_by_id_only(client, server, collection):
    hit = client.get("/search", params={"q": QUERIES[0], "k": 1}).json()["results"][0]
    image = client.get(hit["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.headers["x-content-type-options"] == "nosniff"
    assert image.content == (collection.world / hit["path"]).read_bytes()
    for path in ("/items/shapes/../../etc/passwd", "/items/shapes/..%2F..%2F..%2Fetc%2Fpasswd/image",
                 "/items/shapes/999999/image", "/items/shapes/-1/image", "/items/shapes/1e3/image",
                 "/items/shapes/99999999999999999999999999/image", "/items/nowhere/1/image",
                 "/items/notes/1/image", "/static/../app.py", "/static/..%2Fapp.py"):
        status, body = raw_request(server.port, "GET", path, {"Host": "127.0.0.1"})
        assert status == 404, (path, status, body)
        assert b"root:" not in body and b"import" not in body
    assert_alive(client)


def test_a_file_swapped_for_a_link_out_of_the_root_is_not_served(client, collection, tmp_path):
    hit = client.get("/search", params={"q": QUERIES[2], "k": 1}).json()["results"][0]
    inside = collection.world / hit["path"]
    outside = tmp_path / "secret.png"
    shutil.copy(inside, outside)
    original = inside.read_bytes()
    inside.unlink()
    inside.symlink_to(outside)
    try:
        assert_refused(client.get(hit["image_url"]), 404, "no image for item")
    finally:
        inside.unlink()
        inside.write_bytes(original)
    assert client.get(hit["image_url"]).status_code == 200


# --- bad requests ---------------------------------------------------------------------------------

def test_oversized_uploads_are_refused_before_they_are_read(client, server):
    # Declared too large: refused on the headers, the body never sent.
    status, body = raw_request(server.port, "POST", "/search",
                               {"Host": "127.0.0.1", "Content-Type": "multipart/form-data; boundary=b",
                                "Content-Length": str(500 * 2**20)}, b"--b\r\n")
    assert status == 413 and b"more than the 1 MB allowed" in body
    big = int(2.5 * 2**20)  # the test server takes 1 MB
    assert_refused(client.post("/search", files={"image": ("big.png", b"\0" * big, "image/png")}), 413, "1 MB")

    def streamed():  # chunked: no Content-Length, counted as it arrives
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        yield b"Content-Type: image/png\r\n\r\n"
        for _ in range(big // 65536):
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"

    form = {"content-type": "multipart/form-data; boundary=b"}
    assert_refused(client.post("/search", content=streamed(), headers=form), 413, "over the 1 MB allowed")
    assert_alive(client)


def test_bad_images_are_4xx_never_500(client):
    def upload(data: bytes, name: str = "q.png"):
        return client.post("/search", files={"image": (name, data, "image/png")})

    assert_refused(upload(png_header(30000, 30000)), 413, "too many pixels")  # PIL's own bomb guard
    assert_refused(upload(png_header(8000, 8000)), 413, "8000x8000 pixels, more than the 40000000")  # ours
    assert_refused(upload(os.urandom(5000)), 400, "cannot read the image")
    assert_refused(upload(png_header(64, 64)), 400, "cannot read the image")  # truncated pixel data
    assert_refused(upload(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "q.eps"), 400, "cannot read")
    sliver = io.BytesIO()
    Image.new("RGB", (4000, 10), (200, 30, 30)).save(sliver, format="PNG")
    assert_refused(upload(sliver.getvalue()), 400, "cannot embed this image")  # a ratio the processor refuses
    assert_alive(client)


def test_bad_queries_are_clear_4xx(client):
    assert_refused(client.get("/search"), 400, "give a query")
    assert_refused(client.get("/search", params={"q": "   "}), 400, "give a query")
    assert_refused(client.post("/search", data={"k": "3"}), 400, "give a query")
    assert_refused(client.get("/search", params={"q": "x", "k": 0}), 422, "k: .*greater than or equal to 1")
    assert_refused(client.get("/search", params={"q": "x", "k": 101}), 422, "k: .*less than or equal to 100")
    assert_refused(client.get("/search", params={"q": "x", "k": "ten"}), 422, "k: ")
    assert_refused(client.get("/search", params={"q": "x", "index": "nope"}), 404, "no index named 'nope'.*shapes")
    assert_refused(client.get("/search", params={"q": "x" * 2001}), 400, "2001 characters, more than the 2000")
    assert_refused(client.get("/healthz", headers={"host": "attacker.example"}), 400, "answers to 127.0.0.1")
    assert client.get("/healthz", headers={"host": "localhost:1234"}).status_code == 200
    assert_refused(client.get("/no/such/route"), 404, "not found")
    assert_refused(client.delete("/search"), 405, "not allowed")
    assert client.get("/docs").status_code == 200 and client.get("/openapi.json").json()["paths"]["/v1/embeddings"]
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert_alive(client)


# --- under load -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_bounded_load_without_errors_or_growth(client, server, collection):
    image = collection.test_images[0].read_bytes()

    def one(c: httpx.Client, i: int) -> httpx.Response:
        index = ("shapes", "shapes-alt", "notes")[i % 3]
        if i % 5 == 4:
            return c.post("/search", files={"image": ("q.png", image, "image/png")}, data={"q": QUERIES[i % 4],
                                                                                        "index": index})
        return c.get("/search", params={"q": f"{QUERIES[i % 4]} {i % 7}", "k": 10, "index": index})

    for i in range(20):  # warm-up: the allocator's pools, the thread pool, FAISS's buffers
        assert one(client, i).status_code == 200
    before = rss_bytes()
    statuses, latencies, errors = [], [], []
    stop = time.monotonic() + 3.0

    def worker(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            i = n
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    statuses.append(one(c, i).status_code)
                    latencies.append(1000 * (time.perf_counter() - started))
                except Exception as e:  # noqa: BLE001  (any client error fails the test below)
                    errors.append(repr(e))
                i += 8

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    grown = rss_bytes() - before
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
    print(f"\nload: 8 clients, 3 s: {len(statuses)} requests, p50 {p50:.0f} ms, p99 {p99:.0f} ms; "
          f"RSS {before / 2**20:.0f} MB -> {(before + grown) / 2**20:.0f} MB")
    assert not errors, errors[:3]
    assert statuses and all(status == 200 for status in statuses), sorted(set(statuses))
    assert grown < 200 * 2**20
    assert_alive(client)


# --- the API key ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed(server):
    """The app over the live server's searcher, with an API key, called in this process."""
    from starlette.testclient import TestClient

    with TestClient(create_app(server.searcher, max_upload_mb=1, api_key=KEY)) as c:
        yield c


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_an_api_key_guards_every_data_endpoint(keyed, reference, collection, monkeypatch):
    import hmac

    image = collection.test_images[0].read_bytes()
    hit = reference.search(QUERIES[0], k=1)[0]
    requests = {  # every route that reads the indexes or runs the model
        "GET /indexes": lambda headers: keyed.get("/indexes", headers=headers),
        "GET /search": lambda headers: keyed.get("/search", params={"q": QUERIES[0], "k": 3}, headers=headers),
        "POST /search": lambda headers: keyed.post("/search", files={"image": ("q.png", image, "image/png")},
                                                   data={"k": "3"}, headers=headers),
        "GET /items": lambda headers: keyed.get(f"/items/shapes/{hit.id}/image", headers=headers),
        "POST /v1/embeddings": lambda headers: keyed.post("/v1/embeddings", json={"input": QUERIES[0]}, headers=headers),
    }
    compared = []
    real_compare = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real_compare(a, b))
    for name, send in requests.items():
        for headers, words in (({}, "needs an API key"), (bearer("wrong"), "wrong"), (bearer(KEY[:-1]), "wrong"),
                               (bearer(KEY + "x"), "wrong"), ({"Authorization": KEY}, "needs an API key"),
                               ({"Authorization": f"Basic {KEY}"}, "needs an API key")):
            response = send(headers)
            assert_refused(response, 401, words)
            assert response.headers["www-authenticate"].startswith("Bearer"), name
        assert send(bearer(KEY)).status_code == 200, name
    assert compared and all(b == KEY.encode() for _, b in compared)  # every key compared in constant time

    same_hits(keyed.get("/search", params={"q": QUERIES[1], "k": 5}, headers=bearer(KEY)).json()["results"],
              reference.search(QUERIES[1], k=5))
    assert keyed.get(f"/items/shapes/{hit.id}/image", headers=bearer(KEY)).content == Path(hit.path).read_bytes()
    body = keyed.post("/v1/embeddings", json={"input": QUERIES[2]}, headers={"authorization": f"bearer {KEY}"}).json()
    assert np.allclose(body["data"][0]["embedding"], reference.embed(QUERIES[2]), atol=1e-5)


def test_the_page_docs_and_liveness_stay_open_without_the_data(keyed):
    for path in ("/", "/static/app.js", "/static/style.css", "/docs", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path
    schemes = keyed.get("/openapi.json").json()["components"]["securitySchemes"]
    assert [scheme["scheme"].lower() for scheme in schemes.values()] == ["bearer"]  # the docs' Authorize button
    assert keyed.get("/healthz").json() == {"status": "ok"}  # probes carry no key; the index list is data
    assert keyed.get("/healthz", headers=bearer("wrong")).json() == {"status": "ok"}
    full = keyed.get("/healthz", headers=bearer(KEY)).json()
    assert [s["name"] for s in full["indexes"]] == ["shapes", "shapes-alt", "notes"] and full["limits"]["max_k"] == 100


def test_a_key_beyond_ascii_is_compared_on_its_bytes(server):
    from starlette.testclient import TestClient

    key = "clé-ключ"
    with TestClient(create_app(server.searcher, api_key=key)) as c:
        assert c.get("/indexes", headers={"Authorization": b"Bearer " + key.encode()}).status_code == 200
        assert c.get("/indexes", headers={"Authorization": b"Bearer " + key.encode("latin-1", "replace")}).status_code \
            == 401
    with pytest.raises(SettingError, match="api_key.*must not be empty"):
        create_app(server.searcher, api_key="")


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("LocalHost", True), ("0.0.0.0", False),
                                            ("::", False), ("192.168.1.20", False), ("example.com", False)])
def test_which_hosts_are_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_binding_beyond_loopback_without_a_key_is_refused_before_the_model_loads(collection, monkeypatch, capsys,
                                                                               host):
    monkeypatch.delenv("SLQ_API_KEY", raising=False)
    monkeypatch.setattr(Searcher, "open", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    with pytest.raises(SettingError, match=f"api_key: a key is needed to serve on {re.escape(host)}.*SLQ_API_KEY"):
        run_server([collection.indexes["shapes"]], host=host, port=0)
    monkeypatch.setenv("SLQ_API_KEY", "")  # set but empty: no key
    assert main(["serve", str(collection.indexes["shapes"]), "--host", host, "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("slq: error: --api-key: a key is needed"), err
    assert "SLQ_API_KEY" in err and "127.0.0.1" in err


# --- instructions -----------------------------------------------------------------------------------

def test_an_instruction_per_request_changes_the_query_as_encode_query_does(client, reference, collection):
    retriever = reference.retrievers["shapes-alt"]
    plain, instructed = (retriever.encode_query(QUERIES[0], instruction=i) for i in ("", INSTRUCTION))
    assert not np.allclose(plain, instructed, atol=1e-4)
    body = client.post("/v1/embeddings", json={"input": QUERIES[0], "model": "shapes-alt",
                                               "instruction": INSTRUCTION}).json()
    assert np.allclose(body["data"][0]["embedding"], instructed, atol=1e-5)
    hits = reference.index("shapes-alt").search(instructed, 6)[0]
    same_hits(client.get("/search", params={"q": QUERIES[0], "k": 6, "index": "shapes-alt",
                                            "instruction": INSTRUCTION}).json()["results"], hits)
    same_hits(client.post("/search", data={"q": QUERIES[0], "k": "6", "index": "shapes-alt",
                                           "instruction": INSTRUCTION}).json()["results"], hits)
    image = collection.test_images[0]
    with_image = client.post("/search", files={"image": ("q.png", image.read_bytes(), "image/png")},
                             data={"k": "4", "instruction": INSTRUCTION}).json()["results"]
    same_hits(with_image, reference.search(image=load_image(image), k=4, instruction=INSTRUCTION))
    assert_refused(client.get("/search", params={"q": "x", "instruction": "y" * 2001}), 400,
                   "instruction is 2001 characters")


def test_the_servers_instruction_is_the_default_and_a_request_may_drop_it(server, reference):
    from starlette.testclient import TestClient

    retriever = reference.retrievers["shapes"]
    with TestClient(create_app(server.searcher, instruction=INSTRUCTION)) as c:
        embedded = c.post("/v1/embeddings", json={"input": QUERIES[1]}).json()["data"][0]["embedding"]
        assert np.allclose(embedded, retriever.encode_query(QUERIES[1], instruction=INSTRUCTION), atol=1e-5)
        same_hits(c.get("/search", params={"q": QUERIES[1]}).json()["results"],
                  reference.search(QUERIES[1], instruction=INSTRUCTION))
        dropped = c.post("/v1/embeddings", json={"input": QUERIES[1], "instruction": ""}).json()["data"][0]
        assert np.allclose(dropped["embedding"], retriever.encode_query(QUERIES[1]), atol=1e-5)
        same_hits(c.get("/search", params={"q": QUERIES[1], "instruction": ""}).json()["results"],
                  reference.search(QUERIES[1]))
    with pytest.raises(SettingError, match="instruction"):
        create_app(server.searcher, instruction="x" * 2001)


# --- the command and its library function -----------------------------------------------------------

@pytest.mark.slow
def test_slq_serve_command(collection, reference, tmp_path):
    log = tmp_path / "serve.log"
    indexes = [str(collection.indexes[name]) for name in ("shapes-alt", "notes")]
    with open(log, "w") as out:
        # Ctrl-C as at a terminal, also when the tests run as a background job (which starts with SIGINT ignored)
        proc = subprocess.Popen([sys.executable, "-m", "slq.cli", "serve", *indexes, "--port", "0", "--max-upload-mb",
                                 "2"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"at (http://127\.0\.0\.1:\d+)/", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        url = found.group(1)
        health = httpx.get(f"{url}/healthz", timeout=30).json()
        assert [s["name"] for s in health["indexes"]] == ["shapes-alt", "notes"]
        assert health["limits"]["max_upload_mb"] == 2
        results = httpx.get(f"{url}/search", params={"q": QUERIES[3]}, timeout=30).json()["results"]
        same_hits(results, reference.search(QUERIES[3], index="shapes-alt"))
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down gracefully, then slq exits as interrupted
        proc.wait(timeout=60)
    assert proc.returncode == 130 and "Finished server process" in log.read_text(), log.read_text()


@pytest.fixture
def served(monkeypatch) -> list:
    """(app, bound address) of each run_server call, which does everything up to serving, without serving."""
    served = []

    def fake_run(self, sockets=None):
        served.append((self.config.app, sockets[0].getsockname()[0]))
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)  # keep the test server's logging
    return served


def test_run_server_binds_loopback_and_needs_a_key_otherwise(collection, served, monkeypatch, caplog):
    from starlette.testclient import TestClient

    monkeypatch.delenv("SLQ_API_KEY", raising=False)
    with caplog.at_level(logging.INFO, logger="slq"):
        run_server([collection.indexes["shapes"]], port=0)  # loopback without a key: open, as always
    assert served[-1][1] == "127.0.0.1" and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    local = TestClient(served[-1][0], base_url="http://localhost:8000")
    # (run_server closes its searcher when it returns: requests that read an index's rows are tried live above)
    assert local.get("/healthz").json()["indexes"] and local.get("/indexes").status_code == 200
    assert TestClient(served[-1][0], base_url="http://rebound.example").get("/healthz").status_code == 400
    with pytest.raises(SettingError, match="SLQ_API_KEY"):
        run_server([collection.indexes["shapes"]], host="0.0.0.0", port=0)
    run_server([collection.indexes["shapes"]], host="0.0.0.0", port=0, api_key=KEY)
    network = TestClient(served[-1][0], base_url="http://rebound.example")  # any Host name, but the key
    assert served[-1][1] == "0.0.0.0" and network.get("/healthz").json() == {"status": "ok"}
    assert network.get("/indexes").status_code == 401
    assert network.get("/indexes", headers=bearer(KEY)).status_code == 200


def test_the_key_and_the_instruction_from_the_command_line_and_the_environment(collection, reference, served,
                                                                              monkeypatch):
    from starlette.testclient import TestClient

    shapes = str(collection.indexes["shapes"])
    monkeypatch.setenv("SLQ_API_KEY", KEY)
    assert main(["serve", shapes, "--host", "0.0.0.0", "--port", "0", "--instruction", INSTRUCTION]) == 0
    from_env = TestClient(served[-1][0])
    assert from_env.get("/indexes").status_code == 401
    embedded = from_env.post("/v1/embeddings", json={"input": QUERIES[3]}, headers=bearer(KEY)).json()
    assert np.allclose(embedded["data"][0]["embedding"],
                       reference.retrievers["shapes"].encode_query(QUERIES[3], instruction=INSTRUCTION), atol=1e-5)
    assert main(["serve", shapes, "--port", "0", "--api-key", "another"]) == 0  # the flag wins over the variable
    from_flag = TestClient(served[-1][0], base_url="http://127.0.0.1")
    assert from_flag.get("/indexes", headers=bearer(KEY)).status_code == 401  # a key guards loopback too
    assert from_flag.get("/indexes", headers=bearer("another")).status_code == 200
    monkeypatch.delenv("SLQ_API_KEY")
    assert main(["serve", shapes, "--port", "0"]) == 0
    assert TestClient(served[-1][0], base_url="http://127.0.0.1").get("/indexes").status_code == 200


def test_a_port_in_use_is_one_line_before_any_serving(collection):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(SLQError, match="cannot listen on 127.0.0.1"):
            run_server([collection.indexes["shapes"]], port=taken.getsockname()[1])


def test_missing_server_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "slq.serve.app")
    with pytest.raises(SLQError, match=r"pip install 'slq\[serve\]'"):
        importlib.import_module("slq.serve.app")


def test_still_serving_after_everything(client):
    assert_alive(client)
    assert client.get("/search", params={"q": QUERIES[0]}).status_code == 200
