"""OpenAI-compatible HTTP API (`lumenlm serve`), built on FastAPI.

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions`,
`POST /v1/chat/completions` (both with `stream: true` as server-sent events ending
in `data: [DONE]`). Existing OpenAI clients work with `base_url=http://HOST:PORT/v1`.

Requests are validated strictly (unknown fields are ignored; a wrong type, a value
out of range or text that is not valid Unicode is a 400 with OpenAI's
`{"error": {"message", "type", "param", "code"}}` body, not FastAPI's 422, and
`/openapi.json` documents exactly that); bodies over `max_body_bytes` get 413;
`max_tokens` is capped by `max_tokens_cap`; a wrong method gets 405 with `Allow`.
Beyond OpenAI's fields, `top_k`, `min_p` and `repetition_penalty` are accepted (as
vLLM does).

With an API key, every path but `/health` needs it: the API, and also `/docs`,
`/redoc` and `/openapi.json` (fetch the schema with the key; a browser cannot open
`/docs` then). `lumenlm.infer.listen` runs the app (`serve`), binding its socket first
so that a port in use or an unknown host is one line.

Concurrency: all generation runs on one worker thread, so requests queue up and
the model, its KV cache and each request's private RNG are never shared between
two requests at once; the event loop stays free to accept and stream. A streaming
client that disconnects cancels its generation at the next token.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lumenlm.data.chat_template import ChatTemplate, render_fitted
from lumenlm.infer.generate import StreamEvent, encode_prompts, generate, stream_generate
from lumenlm.infer.middleware import PUBLIC, APIKeyMiddleware, BodyLimitMiddleware
from lumenlm.infer.sampling import SamplingParams
from lumenlm.infer.schema import (
    MAX_N,
    MAX_STOP,
    APIError,
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    error_response,
    error_responses,
    openapi_without_422,
)
from lumenlm.model import GPT

# ----------------------------------------------------------------------------- app


def create_app(
    model: GPT,
    tokenizer: Any,
    *,
    model_name: str = "lumenlm",
    max_tokens_cap: int = 512,
    api_key: str | None = None,
    max_body_bytes: int = 1_000_000,
    template: ChatTemplate | None = None,
) -> FastAPI:
    """A FastAPI app serving `model` (see the module docstring)."""
    if tokenizer is None:
        raise ValueError("the server needs a tokenizer")
    if max_body_bytes < 1 or max_tokens_cap < 1:
        raise ValueError("max_body_bytes and max_tokens_cap must be >= 1")
    template = template or ChatTemplate.from_meta(model.meta)
    ctx = model.config.context_length
    created = int(time.time())
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lumenlm-generate")
    model_lock = threading.Lock()  # belt and braces: the single worker already serializes

    app = FastAPI(title="lumenlm", description="OpenAI-compatible API for a lumenlm model")
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.state.worker = worker

    # -- errors in OpenAI's shape ------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return error_response(
                400, f"body: invalid JSON ({first.get('ctx', {}).get('error', 'decode error')})"
            )
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = str(first.get("msg", "invalid request"))
        if msg.startswith("Value error, "):  # our own check; its message names the field
            return error_response(400, msg.removeprefix("Value error, "), param=loc or None)
        return error_response(400, f"{loc or 'body'}: {msg}", param=loc or None)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # keeps the exception's headers: a 405 carries `Allow`
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    # -- request -> rows + params ---------------------------------------------------------
    def params_for(req: SamplingRequest, max_tokens: int, stop: list[str]) -> SamplingParams:
        top_k = req.top_k if req.top_k is not None and req.top_k > 0 else None
        try:
            return SamplingParams(
                max_new_tokens=min(max_tokens, max_tokens_cap),
                temperature=1.0 if req.temperature is None else req.temperature,
                top_k=top_k,
                top_p=1.0 if req.top_p is None else req.top_p,
                min_p=req.min_p or 0.0,
                repetition_penalty=req.repetition_penalty or 1.0,
                seed=req.seed,
                stop=tuple(dict.fromkeys(stop)),
            )
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    def stops(req: SamplingRequest) -> list[str]:
        s = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(s) > MAX_STOP or any(not x for x in s):
            raise APIError(400, f"stop: up to {MAX_STOP} non-empty strings", param="stop")
        return s

    def prepare_completion(req: CompletionRequest) -> tuple[list[list[int]], SamplingParams]:
        try:
            prompts = encode_prompts(req.prompt, tokenizer, model.config.vocab_size)  # type: ignore[arg-type]
        except ValueError as exc:
            raise APIError(400, f"prompt: {exc}", param="prompt") from None
        check_length(prompts, "prompt")
        params = params_for(req, 16 if req.max_tokens is None else req.max_tokens, stops(req))
        return rows_times_n(prompts, req.n), params

    def prepare_chat(req: ChatRequest) -> tuple[list[list[int]], SamplingParams]:
        max_tokens = (
            req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        )
        params = params_for(
            req,
            max_tokens_cap if max_tokens is None else max_tokens,
            stops(req) + list(template.stop),
        )
        msgs = [
            {
                "role": "system" if m.role == "developer" else m.role,
                "content": m.content
                if isinstance(m.content, str)
                else "".join(p.text for p in m.content or []),
            }
            for m in req.messages
        ]
        text = render_fitted(msgs, template, tokenizer, ctx, params.max_new_tokens)
        prompt = tokenizer.encode(text).ids
        check_length(
            [prompt], "messages"
        )  # older turns were dropped; the last ones still do not fit
        return rows_times_n([prompt], req.n), params

    def check_length(prompts: list[list[int]], param: str) -> None:
        """A prompt the model cannot see whole is refused, as OpenAI does, rather than
        silently cut (the completion may run past the context: the window slides)."""
        longest = max((len(p) for p in prompts), default=0)
        if longest > ctx:
            raise APIError(
                400,
                f"{param}: {longest} tokens, more than this model's context length of "
                f"{ctx} tokens; shorten it",
                code="context_length_exceeded",
                param=param,
            )

    def rows_times_n(prompts: list[list[int]], n: int) -> list[list[int]]:
        if len(prompts) * n > MAX_N:
            raise APIError(400, f"at most {MAX_N} completions per request (prompts x n)")
        return [p for p in prompts for _ in range(n)]

    def run_generate(
        rows: list[list[int]], params: SamplingParams, cancel: threading.Event
    ) -> list[Any]:
        if cancel.is_set():  # the client left while the request was queued
            return []
        with model_lock:
            return generate(model, rows, params, tokenizer=tokenizer, should_stop=cancel.is_set)

    async def generate_unless_gone(
        request: Request, rows: list[list[int]], params: SamplingParams
    ) -> list[Any]:
        """Non-streaming generation on the worker; a client that disconnects cancels it,
        so an abandoned long request does not hold up the queue."""
        cancel = threading.Event()
        fut = asyncio.get_running_loop().run_in_executor(worker, run_generate, rows, params, cancel)
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=0.25)
                if done:
                    return fut.result()
                if await request.is_disconnected():
                    cancel.set()
                    return await fut
        finally:
            cancel.set()

    # -- streaming -----------------------------------------------------------------------
    async def events(rows: list[list[int]], params: SamplingParams) -> AsyncIterator[StreamEvent]:
        """Run stream_generate on the worker thread; yield its events here."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        end = object()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # loop closed (server shutting down)
                cancel.set()

        def work() -> None:
            try:
                if cancel.is_set():
                    return
                with model_lock:
                    for ev in stream_generate(model, rows, params, tokenizer=tokenizer):
                        if cancel.is_set():
                            break
                        put(ev)
            except Exception as exc:
                put(exc)
            finally:
                put(end)

        loop.run_in_executor(worker, work)
        try:
            while True:
                item = await queue.get()
                if item is end:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancel.set()

    def sse(obj: Any) -> str:
        import json

        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def include_usage(req: SamplingRequest) -> bool:
        return bool((req.stream_options or {}).get("include_usage"))

    def usage(rows: list[list[int]], completion_tokens: int) -> dict[str, int]:
        prompt_tokens = sum(len(r) for r in rows)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def response_base(prefix: str, obj: str, **extra: Any) -> Callable[[list[dict]], dict]:
        """`base(choices)`: one response's body (or chunk) around `choices`, with the
        fields every body and chunk of that response shares, in OpenAI's order."""
        head = {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": obj,
            "created": int(time.time()),
            "model": model_name,
            **extra,
        }
        return lambda choices: {**head, "choices": choices}

    def stream_response(
        req: SamplingRequest,
        rows: list[list[int]],
        params: SamplingParams,
        base: Callable[[list[dict]], dict],
        make_chunk: Callable[..., dict],
        first: Sequence[dict] = (),
    ) -> StreamingResponse:
        """The server-sent events of one streamed request: `first`, then `make_chunk`'s
        chunks, a usage chunk if asked, and `[DONE]`."""
        return StreamingResponse(
            stream_body(rows, params, base, make_chunk, first, include_usage(req)),
            media_type="text/event-stream",
        )

    async def stream_body(
        rows: list[list[int]],
        params: SamplingParams,
        base: Callable[[list[dict]], dict],
        make_chunk: Callable[..., dict],
        first: Sequence[dict],
        with_usage: bool,
    ) -> AsyncIterator[str]:
        for c in first:
            yield sse(c)
        counts = [0] * len(rows)
        agen = events(rows, params)
        try:
            async for ev in agen:
                counts[ev.index] += len(ev.token_ids)
                if ev.text:
                    yield sse(make_chunk(ev.index, ev.text, None))
                if ev.finish_reason is not None:
                    yield sse(make_chunk(ev.index, None, ev.finish_reason))
        except Exception as exc:  # the stream has started: report in-band
            yield sse(
                {
                    "error": {
                        "message": str(exc),
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
        else:
            if with_usage:
                yield sse({**base([]), "usage": usage(rows, sum(counts))})
        finally:
            await agen.aclose()  # a disconnected client cancels its generation right away
        yield "data: [DONE]\n\n"

    # -- routes ----------------------------------------------------------------------------
    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "lumenlm"}

    auth = (401,) if api_key else ()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models", responses=error_responses(*auth))
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}", responses=error_responses(*auth, 404))
    async def model_info(name: str) -> dict[str, Any]:
        if name != model_name:
            raise APIError(404, f"model {name!r} not found", code="model_not_found")
        return model_card()

    @app.post("/v1/completions", responses=error_responses(400, *auth, 413, streams=True))
    async def completions(req: CompletionRequest, request: Request) -> Any:
        rows, params = await run_in_threadpool(prepare_completion, req)
        base = response_base("cmpl", "text_completion")

        def choice(i: int, text: str | None, reason: str | None) -> dict:
            return {"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}

        if req.stream:

            def chunk(i: int, text: str | None, reason: str | None) -> dict:
                return base([choice(i, text, reason)])

            return stream_response(req, rows, params, base, chunk)
        results = await generate_unless_gone(request, rows, params)
        return {
            **base([choice(r.index, r.text, r.finish_reason) for r in results]),
            "usage": usage(rows, sum(r.completion_tokens for r in results)),
        }

    @app.post("/v1/chat/completions", responses=error_responses(400, *auth, 413, streams=True))
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        rows, params = await run_in_threadpool(prepare_chat, req)
        base = response_base("chatcmpl", "chat.completion.chunk", system_fingerprint=None)

        if req.stream:
            started = [False] * len(rows)

            def chunk(i: int, text: str | None, reason: str | None) -> dict:
                delta: dict[str, str] = {}
                if text is not None:
                    if not started[i]:  # drop the space after "Assistant:", as the REPL does
                        text = text.lstrip(" ")
                        started[i] = bool(text)
                    delta["content"] = text
                return base(
                    [{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}]
                )

            first = [
                base(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
                for i in range(len(rows))
            ]
            return stream_response(req, rows, params, base, chunk, first)
        results = await generate_unless_gone(request, rows, params)
        return {
            **base(
                [
                    {
                        "index": r.index,
                        "logprobs": None,
                        "finish_reason": r.finish_reason,
                        "message": {"role": "assistant", "content": r.text.lstrip(" ")},
                    }
                    for r in results
                ]
            ),
            "object": "chat.completion",  # the chunks' object is chat.completion.chunk
            "usage": usage(rows, sum(r.completion_tokens for r in results)),
        }

    keyless = PUBLIC if api_key else None
    app.openapi = openapi_without_422(app, keyless)  # type: ignore[method-assign]
    return app
