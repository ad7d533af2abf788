"""OpenAI-compatible HTTP API (`lumenlm serve`), built on FastAPI, over the batch engine.

Endpoints: `GET /health`, `GET /v1/models` (with the context length),
`POST /v1/completions`, `POST /v1/chat/completions` (both with `stream: true` as
server-sent events ending in `data: [DONE]`), and the playground at `/` (unless
`ui=False`). Existing OpenAI clients work with `base_url=http://HOST:PORT/v1`.

`create_app` only wires things together. `schema` validates a request, maps it to
`SamplingParams` and shapes errors; `openai_handlers.OpenAIHandlers` encodes each prompt
once and runs the request; `batch_engine.BatchEngine` generates every row of
every request in one continuous batch (`slots` at a time, `max_queue` waiting; a full
queue is a 429 with `Retry-After`), `bridge.EngineCall` carries its events to the
event loop, and `responses` shapes OpenAI's bodies. A client that disconnects (streamed
or not) cancels its rows, which frees their slots at the engine's next step; every
row has a deadline (`request_timeout`, a 504 past it).

Requests are validated strictly: a wrong type, a value out of range, text that is not
valid Unicode or a field this server does not implement is a 400 with OpenAI's
`{"error": {"message", "type", "param", "code"}}` body (not FastAPI's 422, and
`/openapi.json` documents exactly that); a wrong `model` is 404 `model_not_found`; an
unknown path is 404 in the same shape; bodies over `max_body_bytes` get 413;
`max_tokens` is capped by `max_tokens_cap`; a wrong method gets 405 with `Allow`.
Beyond OpenAI's fields, `top_k`, `min_p`, `repetition_penalty` and `ignore_eos` are
accepted (as vLLM does).

With an API key, every path but `/health` and the playground's static page needs it
(the page asks for the key); `/docs`, `/redoc` and `/openapi.json` too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from lumenlm.data.chat_template import ChatTemplate
from lumenlm.infer.batch_engine import BatchEngine
from lumenlm.infer.middleware import PUBLIC, APIKeyMiddleware, BodyLimitMiddleware
from lumenlm.infer.openai_handlers import OpenAIHandlers
from lumenlm.infer.schema import (
    APIError,
    error_responses,
    install_error_handlers,
    openapi_without_422,
)
from lumenlm.model import GPT


def create_app(
    model: GPT,
    tokenizer: Any,
    *,
    model_name: str = "lumenlm",
    max_tokens_cap: int = 512,
    api_key: str | None = None,
    max_body_bytes: int = 1_000_000,
    template: ChatTemplate | None = None,
    slots: int = 8,
    max_queue: int = 64,
    request_timeout: float | None = 600.0,
    ui: bool = True,
    engine: BatchEngine | None = None,
) -> FastAPI:
    """A FastAPI app serving `model` (see the module docstring). `engine`: an engine to
    share (default: a new one with `slots` and `max_queue`, closed at shutdown)."""
    if tokenizer is None:
        raise ValueError("the server needs a tokenizer")
    if max_body_bytes < 1 or max_tokens_cap < 1:
        raise ValueError("max_body_bytes and max_tokens_cap must be >= 1")
    if request_timeout is not None and not request_timeout > 0:
        raise ValueError("request_timeout must be > 0 (or None)")
    template = template or ChatTemplate.from_meta(model.meta)
    own_engine = engine is None
    eng = engine or BatchEngine(model, tokenizer, slots=slots, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if own_engine:
            eng.close()

    app = FastAPI(
        title="lumenlm", description="OpenAI-compatible API for a lumenlm model", lifespan=lifespan
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if api_key:  # the playground's page is public (it holds no data and asks for the key)
        from lumenlm.infer.ui import PAGE_PATHS, STATIC_PREFIX

        page = (PAGE_PATHS, STATIC_PREFIX) if ui else (frozenset(), "")
        app.add_middleware(
            APIKeyMiddleware, api_key=api_key, public=PUBLIC | page[0], public_prefix=page[1]
        )
    app.state.engine = eng

    install_error_handlers(app)

    handlers = OpenAIHandlers(
        model,
        tokenizer,
        eng,
        model_name=model_name,
        template=template,
        max_tokens_cap=max_tokens_cap,
        request_timeout=request_timeout,
    )

    # -- routes ----------------------------------------------------------------------------
    auth = (401,) if api_key else ()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **eng.stats()}

    @app.get("/v1/models", responses=error_responses(*auth))
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [handlers.model_card()]}

    @app.get("/v1/models/{name}", responses=error_responses(*auth, 404))
    async def model_info(name: str) -> dict[str, Any]:
        if name != model_name:
            raise APIError(404, f"model {name!r} not found", code="model_not_found")
        return handlers.model_card()

    gen_errors = error_responses(400, *auth, 404, 413, 429, 504, streams=True)
    app.post("/v1/completions", responses=gen_errors)(handlers.completions)
    app.post("/v1/chat/completions", responses=gen_errors)(handlers.chat_completions)
    if ui:
        from lumenlm.infer.ui import add_ui

        add_ui(app, model, model_name=model_name, template=template, engine=eng)

    keyless = PUBLIC if api_key else None
    app.openapi = openapi_without_422(app, keyless)  # type: ignore[method-assign]
    return app
