"""`slq serve`: indexes behind a web page, a JSON search API and OpenAI-style embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import backbone_options, instruction_option, load_options

SERVE_DESCRIPTION = """\
Serve one or more index folders (built by `slq index` on the same backbone, which is loaded once,
each with its own adapter) until Ctrl-C:

  /                      the search page: text, an image (upload, drop or paste), or both
  /search                GET ?q=TEXT&k=10&index=NAME, or POST a form with q and/or image
  /items/NAME/ID/image   an indexed image
  /v1/embeddings         OpenAI's embeddings request and response (model = an index name)
  /docs                  the API's reference; /healthz its liveness

It binds 127.0.0.1 (this machine only) by default. With an API key (--api-key, or better the
SLQ_API_KEY environment variable, which `ps` does not show) every request for data must carry
`Authorization: Bearer KEY`; the page asks for the key and sends it. Another --host opens the
server to the network and is refused without a key."""


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0: any free port), got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def register(sub) -> None:
    from ..serve import DEFAULT_MAX_UPLOAD_MB

    p = sub.add_parser("serve", help="serve indexes: a search page, a JSON API and OpenAI-style embeddings",
                       description=SERVE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("indexes", nargs="+", type=Path, metavar="INDEX_DIR",
                   help="index folders written by `slq index`; requests choose one by its folder name")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every network)")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (default: 8000; 0: any free port)")
    p.add_argument("--max-upload-mb", type=_positive_float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help=f"largest request body: an uploaded image, or a JSON of data URLs (default: "
                        f"{DEFAULT_MAX_UPLOAD_MB:g})")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="the key every API request must carry as Authorization: Bearer KEY (default: the SLQ_API_KEY "
                        "environment variable; none: open to anyone who can connect, allowed on loopback only)")
    instruction_option(p, more="; a request's own instruction field overrides it")
    backbone_options(p, recorded="the first index")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    from ..serve import run_server

    options = load_options(args)
    options.pop("image_fit", None)  # each adapter's own applies
    run_server(args.indexes, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
               api_key=args.api_key, instruction=args.instruction, backbone=args.backbone, **options)
