"""`lumenlm serve MODEL`: OpenAI-compatible HTTP API (completions, chat, streaming).

The socket is bound before the model loads, so a port in use or an unknown host is a
one-line error at once. Exposure gets a warning: a non-loopback address without an
API key (anyone who can reach it may use the model), and a key given as `--api-key`
(other users see it in `ps`; `$LUMENLM_API_KEY` does not show).
"""

from __future__ import annotations

import argparse
import os
import sys

from lumenlm.cli.common import add_command
from lumenlm.cli.generate import add_model_args

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "serve",
        run,
        help="OpenAI-compatible HTTP API",
        description="Serve /v1/models, /v1/completions and /v1/chat/completions (with "
        "stream: true as server-sent events) plus /health. Binds 127.0.0.1 unless --host says "
        "otherwise. Use with any OpenAI client: base_url=http://HOST:PORT/v1. To require an "
        "API key, set it in the environment: LUMENLM_API_KEY=KEY lumenlm serve MODEL (then "
        "every path but /health needs 'Authorization: Bearer KEY', /docs and /openapi.json "
        "included).",
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free)")
    p.add_argument(
        "--model-name",
        default=None,
        help="name reported by /v1/models (default: the model directory's name)",
    )
    p.add_argument(
        "--max-tokens-cap",
        type=int,
        default=512,
        help="upper bound on max_tokens per request (default 512)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY'; prefer $LUMENLM_API_KEY, which other "
        "users cannot see in ps (default: $LUMENLM_API_KEY, else none)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=1_000_000,
        help="reject larger request bodies with 413, >= 1 (default 1000000)",
    )
    p.add_argument(
        "--log-level", default="info", choices=LOG_LEVELS, help="uvicorn log level (default info)"
    )


def run(args: argparse.Namespace) -> int:
    from lumenlm.cli.generate import load_model
    from lumenlm.errors import ConfigError
    from lumenlm.infer.listen import bind_socket, is_loopback, serve, url_of
    from lumenlm.infer.server import create_app

    if args.max_tokens_cap < 1:
        raise ConfigError(
            f"--max-tokens-cap must be >= 1, got {args.max_tokens_cap}; give the most tokens "
            "one request may ask for"
        )
    if args.max_body_bytes < 1:
        raise ConfigError(
            f"--max-body-bytes must be >= 1, got {args.max_body_bytes}; give the largest "
            "request body to accept, in bytes (default 1000000)"
        )
    if not 0 <= args.port < 65536:
        raise ConfigError(
            f"--port must be in [0, 65535], got {args.port}; use e.g. 8000 (0: any free port)"
        )
    if args.api_key:
        print(
            "notice: --api-key is visible to every user of this machine (ps, /proc); set "
            "LUMENLM_API_KEY in the environment instead",
            file=sys.stderr,
        )
    api_key = args.api_key or os.environ.get("LUMENLM_API_KEY") or None
    sock = bind_socket(args.host, args.port)
    try:
        if not api_key and not is_loopback(sock):
            print(
                f"warning: serving on {url_of(sock)} (not loopback) without an API key: anyone "
                "who can reach it can use the model; set LUMENLM_API_KEY",
                file=sys.stderr,
            )
        model = load_model(args.model, args.device, args.dtype, verify=args.verify)
        name = args.model_name or model.model_dir.resolve().name
        app = create_app(
            model,
            model.tokenizer,
            model_name=name,
            max_tokens_cap=args.max_tokens_cap,
            api_key=api_key,
            max_body_bytes=args.max_body_bytes,
        )
        url = url_of(sock)  # with --port 0, the port it got
        print(f"serving on {url} (OpenAI base_url {url}/v1; CTRL+C to quit)", file=sys.stderr)
        serve(app, sock, log_level=args.log_level)
    finally:
        sock.close()
    return 0
