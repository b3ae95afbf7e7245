"""The search server: a web page, a JSON search API and OpenAI-style embeddings over a `Searcher`.

Everything a client sends is bounded before it costs memory or a forward pass: a request body by
its Content-Length before any of it is read, or while it streams in (chunked uploads); an image by
its declared size before its pixels are decoded, and only in common formats; a text by its length.
Files are served only through `SearchIndex.image_file` (an item id in, the indexed file out if it
still lies inside the index's root), never from a path a client names. Every refusal is a 4xx with
a one-line JSON `{"detail": ...}`, and the server goes on serving. The model runs one forward pass
at a time, under the `Searcher`'s lock; the endpoints that use it run in uvicorn's thread pool.

With an API key, every data endpoint (the index list, search, item images, embeddings) needs
`Authorization: Bearer KEY`, as OpenAI-style servers do; the page and its static files, the API docs
and /healthz's bare liveness answer stay open (they hold no data), and the page sends the key its
user types. A server bound beyond loopback must have a key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import ipaddress
import logging
import mimetypes
import os
import socket
import time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import numpy as np
from PIL import Image

from .._io import require_positive_int
from .._version import __version__
from ..data.records import exc_reason
from ..errors import SettingError, SLQError
from ..index import Searcher, SearchIndex
from . import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_TEXT_CHARS, DEFAULT_MAX_UPLOAD_MB, MAX_K

try:
    import python_multipart  # noqa: F401  (FastAPI's form parsing; checked here to name the extra)
    import uvicorn
    from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field
except ModuleNotFoundError as e:
    raise SLQError(f"slq serve needs {e.name}: pip install 'slq[serve]'") from None

logger = logging.getLogger("slq")

STATIC = Path(__file__).resolve().parent / "static"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # PIL plugins a client may reach (no EPS/Ghostscript)
FORM_ALLOWANCE = 64 * 1024  # room for a form's boundaries and text fields beside an image of max_upload_mb
MAX_EMBEDDING_INPUTS = 256
INDEX_HELP = "an index name (default: the server's first index)"
INSTRUCTION_HELP = "a task instruction put before the query text (default: the server's; an empty one: none)"
API_KEY_VARIABLE = "SLQ_API_KEY"  # where run_server (and so `slq serve`) finds a key it is not given
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


# --- the door: body size and Host header, before a route sees the request ------------------------

def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


class _Guard:
    """A pure ASGI middleware that refuses a request body over `max_body` bytes (by its declared
    Content-Length before reading any of it, else by counting the chunks as they arrive), refuses
    Host headers outside `allowed_hosts` (DNS rebinding: a web page elsewhere reaching a loopback
    server through a name of its own), and adds security headers to every response."""

    def __init__(self, app, max_body: int, limit_text: str, allowed_hosts: tuple[str, ...] | None):
        self.app, self.max_body, self.allowed_hosts = app, max_body, allowed_hosts
        self.limit_text = limit_text  # the limit as users set it (max_upload_mb), for the messages

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secured(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        headers = dict(scope["headers"])
        refusal = self._refusal(headers)
        if refusal is not None:
            status, detail = refusal
            return await JSONResponse({"detail": detail}, status)(scope, receive, send_secured)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:  # FastAPI re-raises an HTTPException met while reading a body
                    raise HTTPException(413, f"the request body is over the {self.limit_text} allowed")
            return message

        await self.app(scope, counted, send_secured)

    def _refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        host = headers.get(b"host")
        if self.allowed_hosts is not None and host is not None and _host_name(host) not in self.allowed_hosts:
            return 400, (f"this server answers to {', '.join(self.allowed_hosts)}, not {host.decode('latin-1')!r} "
                         "(a page elsewhere reaching it through a name of its own is refused)")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            return 413, f"the request body is {_mb(int(declared))}, more than the {self.limit_text} allowed"
        return None


def _host_name(host: bytes) -> str:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1")."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


# --- what a client sends ----------------------------------------------------------------------

def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an uploaded image as RGB; HTTPException 413 when its declared size exceeds
    `max_pixels` (checked before decoding: a decompression bomb costs its header only), 400 when
    it cannot be read."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            if image.width * image.height > max_pixels:
                raise HTTPException(413, f"the image is {image.width}x{image.height} pixels, more than the "
                                         f"{max_pixels} allowed")
            image.load()
            return image.convert("RGB")
    except HTTPException:
        raise
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"the image has too many pixels: {exc_reason(e)}") from None
    except Image.UnidentifiedImageError:
        raise HTTPException(400, f"cannot read the image: not a {', '.join(IMAGE_FORMATS)} file") from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise HTTPException(400, f"cannot read the image: {exc_reason(e)}") from None


def _data_url_bytes(text: str, where: str) -> bytes:
    """The bytes of a `data:image/...;base64,...` URL."""
    header, comma, payload = text.partition(",")
    if not comma or header.rsplit(";", 1)[-1].lower() != "base64":
        raise HTTPException(400, f"{where}: an image is sent as a base64 data URL: data:image/png;base64,...")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise HTTPException(400, f"{where}: the data URL is not valid base64: {exc_reason(e)}") from None


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """An embedding as OpenAI sends it: a list of floats, or base64 of little-endian float32."""
    vector = np.asarray(vector, dtype="<f4")
    return base64.b64encode(vector.tobytes()).decode("ascii") if encoding_format == "base64" else vector.tolist()


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request. `model` names an index (its adapter embeds); a string that is a
    `data:image/...;base64,` URL is embedded as an image."""

    model_config = ConfigDict(extra="allow")  # OpenAI's `user` and the like are accepted and ignored

    input: str | list[Any] = Field(description="a string or a list of strings: texts, or images as "
                                               "data:image/png;base64,... URLs")
    model: str | None = Field(None, description=INDEX_HELP)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="if given, must be the index's width (no truncation)")
    instruction: str | None = Field(None, description=INSTRUCTION_HELP + "; applies to the texts and the images")


# --- the key -------------------------------------------------------------------------------------

BEARER = HTTPBearer(auto_error=False, scheme_name="API key",
                    description=f"the server's API key: slq serve --api-key KEY, or {API_KEY_VARIABLE}")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]  # None: no Bearer header


class _KeyCheck:
    """Whether a request carries the server's API key as `Authorization: Bearer KEY` (any request
    does when the server has none). FastAPI's `HTTPBearer` reads the header; the key is compared in
    constant time, on the bytes the client sent (Starlette decodes headers as Latin-1)."""

    def __init__(self, api_key: str | None):
        if api_key is not None and not api_key:
            raise SettingError("api_key", api_key, "must not be empty")
        self.expected = api_key.encode("utf-8") if api_key else None

    def passes(self, credentials: HTTPAuthorizationCredentials | None) -> bool:
        if self.expected is None:
            return True
        return credentials is not None and hmac.compare_digest(credentials.credentials.encode("latin-1"), self.expected)

    def require(self, credentials: Credentials) -> None:
        """A route dependency: refuse with 401 and `WWW-Authenticate: Bearer` (RFC 6750) unless the key is right."""
        if self.passes(credentials):
            return
        if credentials is None:
            raise HTTPException(401, "this server needs an API key: send the header Authorization: Bearer KEY",
                                headers={"WWW-Authenticate": "Bearer"})
        raise HTTPException(401, "the API key is wrong", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


# --- the application ----------------------------------------------------------------------------

def create_app(searcher: Searcher, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
               allowed_hosts: tuple[str, ...] | None = None, api_key: str | None = None,
               instruction: str = "") -> FastAPI:
    """The server's FastAPI application over `searcher`'s indexes (see the module docstring).

    `max_upload_mb` bounds a request body (an uploaded image with its form, or a JSON body whose
    data URLs count as their base64 text); `allowed_hosts` (None: any) the Host names it answers
    to, which `run_server` sets when it binds a loopback address. `api_key` (None: none) is the
    key every data request must carry as `Authorization: Bearer KEY`. `instruction` goes before
    every query text (`Encoder.encode_query`'s instruction) unless a request gives its own.
    """
    if not max_upload_mb > 0:
        raise SettingError("max_upload_mb", max_upload_mb, "must be > 0")
    require_positive_int("max_image_pixels", max_image_pixels)
    require_positive_int("max_text_chars", max_text_chars)
    if len(instruction) > max_text_chars:
        raise SettingError("instruction", instruction, f"is {len(instruction)} characters, more than the "
                                                       f"{max_text_chars} of max_text_chars")
    keys = _KeyCheck(api_key)
    default_instruction = instruction.strip()
    max_image_bytes = int(max_upload_mb * 2**20)
    summaries = [_public_summary(index) for index in searcher.indexes.values()]  # read-only while serving
    limits = {"max_upload_mb": max_upload_mb, "max_image_pixels": max_image_pixels, "max_text_chars": max_text_chars,
              "max_k": MAX_K}

    app = FastAPI(title="slq", version=__version__,
                  description="Search images or texts with a text, an image, or both; embeddings in OpenAI's shape.")
    app.add_middleware(_Guard, max_body=max_image_bytes + FORM_ALLOWANCE, limit_text=f"{max_upload_mb:g} MB",
                       allowed_hosts=allowed_hosts)
    _add_error_handlers(app)
    api = APIRouter(dependencies=[Depends(keys.require)])  # every route that reads the indexes or the model

    def index_of(name: str | None) -> SearchIndex:
        if not name:
            return searcher.index()
        if name not in searcher.indexes:
            raise HTTPException(404, f"no index named {name!r}; this server has {', '.join(searcher.indexes)}")
        return searcher.indexes[name]

    def query_text(text: str | None, where: str = "q") -> str | None:
        text = text.strip() if text else None
        if text and len(text) > max_text_chars:
            raise HTTPException(400, f"{where} is {len(text)} characters, more than the {max_text_chars} allowed")
        return text or None

    def query_instruction(given: str | None) -> str:
        """A request's instruction (an empty one: none), else the server's."""
        if given is None:
            return default_instruction
        if len(given) > max_text_chars:
            raise HTTPException(400, f"instruction is {len(given)} characters, more than the {max_text_chars} allowed")
        return given.strip()

    def embed(index: SearchIndex, text: str | None, image: Image.Image | None, instruction: str) -> np.ndarray:
        try:
            return searcher.embed(text, image, index.name, instruction=instruction)  # under the model lock
        except (ValueError, SLQError) as e:  # e.g. an image of an aspect ratio the processor refuses
            raise HTTPException(400, f"cannot embed this {'image' if image is not None else 'text'}: "
                                     f"{exc_reason(e)}") from None

    def search(text: str | None, image: Image.Image | None, k: int, name: str | None, instruction: str) -> dict:
        index = index_of(name)
        if text is None and image is None:
            raise HTTPException(400, "give a query: a text (q), an image, or both")
        started = time.perf_counter()
        hits = index.search(embed(index, text, image, instruction), k)[0]
        results = [{"id": hit.id, "score": hit.score, "path": _shown_path(index, hit.path), "text": hit.text,
                    "captions": hit.captions,
                    "image_url": f"/items/{quote(index.name, safe='')}/{hit.id}/image" if hit.path else None}
                   for hit in hits]
        return {"index": index.name, "k": k, "results": results, "ms": round(1000 * (time.perf_counter() - started), 2)}

    def uploaded_image(upload: UploadFile | None) -> Image.Image | None:
        if upload is None or (not upload.filename and not upload.size):  # a form's empty file field
            return None
        data = upload.file.read(max_image_bytes + 1)  # spooled to disk by the form parser beyond 1 MB
        if len(data) > max_image_bytes:
            raise HTTPException(413, f"the image is over the {max_upload_mb:g} MB allowed")
        return open_image(data, max_image_pixels)

    @app.get("/healthz", summary="liveness; with the API key (if the server has one) the indexes and limits too")
    def healthz(credentials: Credentials) -> dict:
        if not keys.passes(credentials):  # probes carry no key; what is served is data
            return {"status": "ok"}
        return {"status": "ok", "indexes": summaries, "limits": limits}

    @api.get("/indexes", summary="the indexes served (name, kind, items, width, adapter) and the request limits")
    def indexes() -> dict:
        return {"indexes": summaries, "limits": limits}

    @api.get("/search", summary="search an index with a text")
    def search_text(q: Annotated[str | None, Query(description="the query text")] = None,
                    k: Annotated[int, Query(ge=1, le=MAX_K, description="how many results")] = 10,
                    index: Annotated[str | None, Query(description=INDEX_HELP)] = None,
                    instruction: Annotated[str | None, Query(description=INSTRUCTION_HELP)] = None) -> dict:
        return search(query_text(q), None, k, index, query_instruction(instruction))

    @api.post("/search", summary="search an index with a text, an uploaded image, or both (multipart form)")
    def search_form(q: Annotated[str | None, Form(description="the query text (with an image: read beside it)")] = None,
                    image: Annotated[UploadFile | None, File(description="a query image: " + ", ".join(IMAGE_FORMATS))]
                    = None,
                    k: Annotated[int, Form(ge=1, le=MAX_K, description="how many results")] = 10,
                    index: Annotated[str | None, Form(description=INDEX_HELP)] = None,
                    instruction: Annotated[str | None, Form(description=INSTRUCTION_HELP)] = None) -> dict:
        chosen = query_instruction(instruction)
        picture = uploaded_image(image)
        return search(query_text(q), picture, k, index, chosen)

    @api.get("/items/{index}/{item_id}/image", summary="an indexed image, by index name and item id",
             response_class=FileResponse)
    def item_image(index: str, item_id: str) -> FileResponse:
        chosen = index_of(index)
        valid = item_id.isascii() and item_id.isdigit() and len(item_id) <= 18
        path = chosen.image_file(int(item_id)) if valid else None
        if path is None:
            raise HTTPException(404, f"index {chosen.name} has no image for item {item_id[:40]!r}")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @api.post("/v1/embeddings", summary="embeddings in OpenAI's request and response shape")
    def embeddings(body: EmbeddingRequest) -> dict:
        index = index_of(body.model)
        chosen = query_instruction(body.instruction)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not 1 <= len(inputs) <= MAX_EMBEDDING_INPUTS:
            raise HTTPException(400, f"input: give 1 to {MAX_EMBEDDING_INPUTS} strings, got {len(inputs)}")
        if body.dimensions is not None and body.dimensions != index.dim:
            raise HTTPException(400, f"dimensions: {index.name}'s embeddings have {index.dim}, got {body.dimensions}")
        for i, item in enumerate(inputs):  # all checked before any is embedded
            if not isinstance(item, str) or not item.strip():
                raise HTTPException(400, f"input[{i}]: each input is a non-empty string (a text, or an image as a "
                                         "data:image/png;base64,... URL); token arrays are not supported")
        data = []
        for i, item in enumerate(inputs):  # one image decoded at a time, not the whole list at once
            where = f"input[{i}]"
            if item[:11].lower() == "data:image/":
                vector = embed(index, None, open_image(_data_url_bytes(item, where), max_image_pixels), chosen)
            else:
                vector = embed(index, query_text(item, where), None, chosen)
            data.append({"object": "embedding", "index": i, "embedding": _encoded(vector, body.encoding_format)})
        return {"object": "list", "data": data, "model": index.name, "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal as one line in `detail`: validation errors joined, library errors as 400."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                parts.append(f"the body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
                continue
            where = ".".join(str(p) for p in error["loc"][1:])  # without "query" / "body" / "path"
            parts.append(f"{where}: {error['msg']}" if where else error["msg"])
        return JSONResponse({"detail": "; ".join(parts)}, 422)

    @app.exception_handler(SLQError)
    async def refused(request: Request, exc: SLQError) -> JSONResponse:
        return JSONResponse({"detail": exc.message()}, 400)


def _public_summary(index: SearchIndex) -> dict:
    """An index's summary without the machine's absolute paths: the source and adapter by folder name."""
    summary = index.summary()
    return {**summary, "source": Path(summary["source"]).name, "adapter": Path(summary["adapter"]).name}


def _shown_path(index: SearchIndex, path: str | None) -> str | None:
    """An item's path relative to its index's root (the file name if it lies elsewhere)."""
    if path is None:
        return None
    for root in index.roots:
        if Path(path).is_relative_to(root):
            return Path(path).relative_to(root).as_posix()
    return Path(path).name


# --- running it ---------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or an SLQError saying why not (a port in use, an unknown address)."""
    try:
        family = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host.strip("[]"), port), family=family)
    except OSError as e:
        raise SLQError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another port or host") from None


def run_server(folders: list[str | os.PathLike], *, host: str = "127.0.0.1", port: int = 8000,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, api_key: str | None = None, instruction: str = "",
               **load_options) -> None:
    """Open the index folders (one backbone, loaded once, one adapter per index) and serve them
    until interrupted. `load_options` go to `Searcher.open` (backbone, dtype, device,
    trust_remote_code). A loopback address (the default) answers only to loopback Host names. Any
    other address opens the server to the network, so it needs an API key: `api_key`, else the
    SLQ_API_KEY environment variable (refused without one, before the model loads)."""
    if api_key is None:
        api_key = os.environ.get(API_KEY_VARIABLE) or None  # an empty variable counts as unset
    loopback = is_loopback(host)
    if not loopback and api_key is None:
        raise SettingError("api_key", rule=f"a key is needed to serve on {host}, which opens the indexes to the "
                                           f"network: give one (or set {API_KEY_VARIABLE}) for every request to carry "
                                           "as Authorization: Bearer KEY, or bind 127.0.0.1 to stay on this machine")
    searcher = Searcher.open(folders, **load_options)
    try:
        app = create_app(searcher, max_upload_mb=max_upload_mb, max_image_pixels=max_image_pixels,
                         max_text_chars=max_text_chars, api_key=api_key, instruction=instruction,
                         allowed_hosts=tuple(dict.fromkeys([*LOOPBACK_NAMES, host.strip("[]").lower()]))
                         if loopback else None)
        sock = _listen(host, port)
        bound = sock.getsockname()[1]
        shown = f"[{host.strip('[]')}]" if ":" in host else host
        logger.info("serving %s at http://%s:%d/ (API docs at /docs; Ctrl-C stops)%s", ", ".join(searcher.indexes),
                    shown, bound, "; requests need the API key" if api_key else "")
        level = logging.getLevelName(max(logger.getEffectiveLevel(), logging.INFO)).lower()
        config = uvicorn.Config(app, log_level=level, limit_concurrency=64, server_header=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        searcher.close()
