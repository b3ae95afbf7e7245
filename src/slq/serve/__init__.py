"""`slq serve`: built indexes behind a web page, a JSON search API and OpenAI-style embeddings.

    app     create_app(searcher) -> FastAPI, run_server(folders) (uvicorn, 127.0.0.1 by default)
    static  the web page: one HTML file, its script and style sheet (no build step, no CDN)

The limits below are the defaults of both functions and of the CLI's flags; they live here so that
`slq --help` does not import FastAPI. Needs the `[serve]` extra.
"""

from __future__ import annotations

DEFAULT_MAX_UPLOAD_MB = 16.0  # the largest request body (an uploaded image and its form, or a JSON of data URLs)
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # as `slq index` (IndexConfig.max_image_pixels): decompression bombs
DEFAULT_MAX_TEXT_CHARS = 2000
MAX_K = 100

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "DEFAULT_MAX_TEXT_CHARS", "DEFAULT_MAX_UPLOAD_MB", "MAX_K", "create_app",
           "run_server"]


def __getattr__(name: str):
    if name in ("create_app", "run_server"):  # imported on first use: FastAPI is an optional dependency
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
