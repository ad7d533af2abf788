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
from pathlib import Path

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
        "--slots",
        type=int,
        default=8,
        help="sequences decoded together in one continuous batch, >= 1 (default 8; "
        "1 = one at a time)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="sequences waiting for a free slot before requests get 429 with Retry-After, "
        ">= 0 (default 64)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds a request may take, queueing included, before it ends with 504 (default 600)",
    )
    p.add_argument("--no-ui", action="store_true", help="do not serve the web playground at /")
    p.add_argument(
        "--log-level", default="info", choices=LOG_LEVELS, help="uvicorn log level (default info)"
    )


CHECKPOINT_NAMES = ("best", "last", "latest", "final")


def served_name(model_dir: Path) -> str:
    """The model id clients see: the model directory's name, or for a run's checkpoint
    (`RUN/checkpoints/best`, `RUN/checkpoints/step_100`) the run's name."""
    d = model_dir.resolve()
    if d.parent.name == "checkpoints" and (
        d.name in CHECKPOINT_NAMES or d.name.startswith("step_")
    ):
        return d.parent.parent.name
    if d.name in CHECKPOINT_NAMES:
        return d.parent.name
    return d.name


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
    if args.slots < 1 or args.max_queue < 0:
        raise ConfigError(
            f"--slots must be >= 1 and --max-queue >= 0, got {args.slots} and "
            f"{args.max_queue}; e.g. --slots 8 --max-queue 64"
        )
    if not args.request_timeout > 0:
        raise ConfigError(
            f"--request-timeout must be > 0 seconds, got {args.request_timeout}; e.g. 600"
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
        model = load_model(args.model, args.device, args.dtype, args.verify, what="lumenlm serve")
        name = args.model_name or served_name(model.model_dir)
        app = create_app(
            model,
            model.tokenizer,
            model_name=name,
            max_tokens_cap=args.max_tokens_cap,
            api_key=api_key,
            max_body_bytes=args.max_body_bytes,
            slots=args.slots,
            max_queue=args.max_queue,
            request_timeout=args.request_timeout,
            ui=not args.no_ui,
        )
        url = url_of(sock)  # with --port 0, the port it got
        print(f"serving on {url} (OpenAI base_url {url}/v1; CTRL+C to quit)", file=sys.stderr)
        serve(app, sock, log_level=args.log_level)
    finally:
        sock.close()
    return 0
