"""`lumenlm serve MODEL`: OpenAI-compatible HTTP API (completions, chat, streaming)."""

from __future__ import annotations

import argparse
import os

from lumenlm.cli.common import add_command
from lumenlm.cli.generate import add_model_args


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "serve",
        run,
        help="OpenAI-compatible HTTP API",
        description="Serve /v1/models, /v1/completions and /v1/chat/completions (with "
        "stream: true as server-sent events) plus /health. Binds 127.0.0.1 unless --host says "
        "otherwise. Use with any OpenAI client: base_url=http://HOST:PORT/v1.",
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
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
        help="require 'Authorization: Bearer KEY' (default: $LUMENLM_API_KEY, else none)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=1_000_000,
        help="reject larger request bodies with 413 (default 1000000)",
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")


def run(args: argparse.Namespace) -> int:
    from lumenlm.cli.generate import load_model
    from lumenlm.errors import ConfigError
    from lumenlm.infer.server import create_app, serve

    if args.max_tokens_cap < 1:
        raise ConfigError(f"--max-tokens-cap must be >= 1, got {args.max_tokens_cap}")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    model = load_model(args.model, args.device, args.dtype)
    name = args.model_name or model.model_dir.resolve().name
    api_key = args.api_key or os.environ.get("LUMENLM_API_KEY") or None
    app = create_app(
        model,
        model.tokenizer,
        model_name=name,
        max_tokens_cap=args.max_tokens_cap,
        api_key=api_key,
        max_body_bytes=args.max_body_bytes,
    )
    serve(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
