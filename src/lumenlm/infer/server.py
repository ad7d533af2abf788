"""OpenAI-compatible HTTP API (`lumenlm serve`), built on FastAPI, over the batch engine.

Endpoints: `GET /health`, `GET /v1/models` (with the context length),
`POST /v1/completions`, `POST /v1/chat/completions` (both with `stream: true` as
server-sent events ending in `data: [DONE]`), and the playground at `/` (unless
`ui=False`). Existing OpenAI clients work with `base_url=http://HOST:PORT/v1`.

The routes are thin: `schema` validates a request and maps it to `SamplingParams`,
each prompt is encoded once here, `batch_engine.BatchEngine` generates every row of
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

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lumenlm.data.chat_template import ChatTemplate, render_fitted
from lumenlm.infer import responses as R
from lumenlm.infer.batch_engine import BatchEngine, QueueFull
from lumenlm.infer.bridge import EngineCall
from lumenlm.infer.generate import encode_prompts
from lumenlm.infer.middleware import PUBLIC, APIKeyMiddleware, BodyLimitMiddleware
from lumenlm.infer.sampling import SamplingParams
from lumenlm.infer.schema import (
    MAX_N,
    APIError,
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    error_response,
    error_responses,
    openapi_without_422,
    to_params,
)
from lumenlm.model import GPT

RETRY_AFTER_S = 1  # what a 429 tells the client to wait


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
    ctx = model.config.context_length
    created = int(time.time())
    own_engine = engine is None
    eng = engine or BatchEngine(model, tokenizer, slots=slots, max_queue=max_queue)
    token_text = R.TokenText(tokenizer)
    chat_stop_ids = tuple(template.stop_token_ids(tokenizer))

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
            msg = msg.removeprefix("Value error, ")
            return error_response(400, msg, param=loc or msg.split(":")[0].split("[")[0])
        return error_response(400, f"{loc or 'body'}: {msg}", param=loc or None)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.param, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(
                404,
                f"Invalid URL ({request.method} {request.url.path}): this server has "
                "/v1/models, /v1/completions and /v1/chat/completions",
                code="unknown_url",
            )
        # keeps the exception's headers: a 405 carries `Allow`
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    # -- request -> rows + params ---------------------------------------------------------
    def check_model(req: SamplingRequest) -> None:
        if req.model is not None and req.model != model_name:
            raise APIError(
                404,
                f"The model {req.model!r} does not exist; this server serves {model_name!r} "
                "(see /v1/models)",
                code="model_not_found",
                param="model",
            )

    def params_of(req: SamplingRequest, max_tokens: int, **extra: Any) -> SamplingParams:
        try:
            params = to_params(req, max_tokens, max_tokens_cap, extra.pop("stop", ()))
            params = replace(params, **extra) if extra else params
            params.check_vocab(model.config.vocab_size)  # logit_bias ids
            return params
        except ValueError as exc:
            raise APIError(400, str(exc), param=str(exc).split(":")[0].split(" ")[0]) from None

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

    def check_rows(prompts: list[list[int]], n: int) -> None:
        if len(prompts) * n > MAX_N:
            raise APIError(400, f"at most {MAX_N} completions per request (prompts x n)")

    def prepare_completion(req: CompletionRequest) -> tuple[list[list[int]], SamplingParams]:
        check_model(req)
        try:
            prompts = encode_prompts(req.prompt, tokenizer, model.config.vocab_size)  # type: ignore[arg-type]
        except ValueError as exc:
            raise APIError(400, f"prompt: {exc}", param="prompt") from None
        check_length(prompts, "prompt")
        check_rows(prompts, req.n)
        return prompts, params_of(req, 16 if req.max_tokens is None else req.max_tokens)

    def prepare_chat(req: ChatRequest) -> tuple[list[int], SamplingParams]:
        check_model(req)
        max_tokens = (
            req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        )
        params = params_of(
            req,
            max_tokens_cap if max_tokens is None else max_tokens,
            stop=template.stop,
            stop_token_ids=chat_stop_ids,
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
        check_rows([prompt], req.n)
        return prompt, params

    def start(
        rows: Sequence[Sequence[int]], params: SamplingParams, logprobs: int | None, echo: bool
    ) -> EngineCall:
        try:
            return EngineCall(
                eng,
                rows,
                params,
                logprobs=logprobs,
                prompt_logprobs=echo and logprobs is not None,
                timeout=request_timeout,
            )
        except QueueFull:
            raise APIError(
                429,
                f"the server is busy (all {eng.slots} slots in use and the queue full); "
                f"retry in {RETRY_AFTER_S} s",
                type_="rate_limit_error",
                code="server_busy",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None

    def include_usage(req: SamplingRequest) -> bool:
        return bool((req.stream_options or {}).get("include_usage"))

    def timeout_error() -> APIError:
        return APIError(
            504,
            f"the request ran past the server's {request_timeout:g} s timeout; ask for fewer "
            "tokens or retry later",
            type_="timeout",
        )

    # -- completions ------------------------------------------------------------------------
    async def completions(req: CompletionRequest, request: Request) -> Any:
        prompts, params = await run_in_threadpool(prepare_completion, req)
        rows = [p for p in prompts for _ in range(req.n)]
        call = start(rows, params, req.logprobs, req.echo)
        base = R.response_base(model_name, "cmpl", "text_completion")
        prompt_tokens = sum(len(p) for p in prompts)
        echo_text = [tokenizer.decode(r) if req.echo else "" for r in rows]
        if req.stream:
            return StreamingResponse(
                completion_stream(req, call, rows, base, echo_text, prompt_tokens),
                media_type="text/event-stream",
            )
        texts = [[t] for t in echo_text]
        reasons: list[str | None] = [None] * len(rows)
        lps: list[list] = [[] for _ in rows]
        counts = [0] * len(rows)
        async for i, ev in call.events(request.is_disconnected):
            if ev.error:
                raise APIError(500, ev.error, type_="server_error")
            if ev.finish_reason == "timeout":
                raise timeout_error()
            texts[i].append(ev.text)
            counts[i] += len(ev.token_ids)
            lps[i] += ev.logprobs or []
            reasons[i] = ev.finish_reason or reasons[i]
        choices = []
        for i, seq in enumerate(call.seqs):
            logprobs = None
            if req.logprobs is not None:
                logprobs = R.completion_logprobs(lps[i], token_text, len(echo_text[i]))
                if req.echo:
                    echoed = R.echo_logprobs(rows[i], seq.prompt_logprobs or [], token_text)
                    logprobs = R.merge_completion_logprobs(
                        echoed, R.completion_logprobs(lps[i], token_text)
                    )
            choices.append(
                {
                    "index": i,
                    "text": "".join(texts[i]),
                    "logprobs": logprobs,
                    "finish_reason": reasons[i],
                }
            )
        return {**base(choices), "usage": R.usage(prompt_tokens, sum(counts))}

    async def completion_stream(
        req: CompletionRequest,
        call: EngineCall,
        rows: list[list[int]],
        base: Any,
        echo_text: list[str],
        prompt_tokens: int,
    ) -> AsyncIterator[str]:
        offsets = [len(t) for t in echo_text]
        counts = [0] * len(rows)
        for i, text in enumerate(echo_text):
            if text:
                lp = None
                if req.logprobs is not None:
                    lp = R.echo_logprobs(rows[i], call.seqs[i].prompt_logprobs or [], token_text)
                yield R.sse(
                    base([{"index": i, "text": text, "logprobs": lp, "finish_reason": None}])
                )
        try:
            async for i, ev in call.events():
                if ev.error or ev.finish_reason == "timeout":
                    yield R.sse_error(ev.error or timeout_error().message)
                    call.cancel()
                    break
                counts[i] += len(ev.token_ids)
                lp = None
                if req.logprobs is not None and ev.logprobs:
                    lp = R.completion_logprobs(ev.logprobs, token_text, offsets[i])
                    offsets[i] += sum(len(t) for t in lp["tokens"])
                if ev.text or lp or ev.finish_reason:
                    choice = {
                        "index": i,
                        "text": ev.text,
                        "logprobs": lp,
                        "finish_reason": ev.finish_reason,
                    }
                    yield R.sse(base([choice]))
            else:
                if include_usage(req):
                    yield R.sse({**base([]), "usage": R.usage(prompt_tokens, sum(counts))})
        finally:
            call.cancel()  # a disconnected client frees its slots at once
        yield R.DONE

    # -- chat ----------------------------------------------------------------------------
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        prompt, params = await run_in_threadpool(prepare_chat, req)
        top = (req.top_logprobs or 0) if req.logprobs else None
        call = start([prompt] * req.n, params, top, False)
        base = R.response_base(
            model_name, "chatcmpl", "chat.completion.chunk", system_fingerprint=None
        )
        if req.stream:
            return StreamingResponse(
                chat_stream(req, call, base, len(prompt), top), media_type="text/event-stream"
            )
        texts: list[list[str]] = [[] for _ in range(req.n)]
        reasons: list[str | None] = [None] * req.n
        lps: list[list] = [[] for _ in range(req.n)]
        counts = [0] * req.n
        async for i, ev in call.events(request.is_disconnected):
            if ev.error:
                raise APIError(500, ev.error, type_="server_error")
            if ev.finish_reason == "timeout":
                raise timeout_error()
            texts[i].append(ev.text)
            counts[i] += len(ev.token_ids)
            lps[i] += ev.logprobs or []
            reasons[i] = ev.finish_reason or reasons[i]
        choices = [
            {
                "index": i,
                "logprobs": R.chat_logprobs(lps[i], token_text, top) if top is not None else None,
                "finish_reason": reasons[i],
                "message": {"role": "assistant", "content": "".join(texts[i]).lstrip(" ")},
            }
            for i in range(req.n)
        ]
        return {
            **base(choices),
            "object": "chat.completion",  # the chunks' object is chat.completion.chunk
            "usage": R.usage(len(prompt), sum(counts)),
        }

    async def chat_stream(
        req: ChatRequest, call: EngineCall, base: Any, prompt_tokens: int, top: int | None
    ) -> AsyncIterator[str]:
        started = [False] * req.n
        counts = [0] * req.n
        for i in range(req.n):
            delta = {"role": "assistant", "content": ""}
            yield R.sse(
                base([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
            )
        try:
            async for i, ev in call.events():
                if ev.error or ev.finish_reason == "timeout":
                    yield R.sse_error(ev.error or timeout_error().message)
                    call.cancel()
                    break
                counts[i] += len(ev.token_ids)
                text = ev.text
                if not started[i]:  # drop the space after "Assistant:", as the REPL does
                    text = text.lstrip(" ")
                    started[i] = bool(text)
                lp = (
                    R.chat_logprobs(ev.logprobs, token_text, top)
                    if top is not None and ev.logprobs
                    else None
                )
                if text or lp or ev.finish_reason:
                    delta = {"content": text} if text or not ev.finish_reason else {}
                    choice = {
                        "index": i,
                        "delta": delta,
                        "logprobs": lp,
                        "finish_reason": ev.finish_reason,
                    }
                    yield R.sse(base([choice]))
            else:
                if include_usage(req):
                    yield R.sse({**base([]), "usage": R.usage(prompt_tokens, sum(counts))})
        finally:
            call.cancel()
        yield R.DONE

    # -- routes ----------------------------------------------------------------------------
    def model_card() -> dict[str, Any]:
        return {
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "lumenlm",
            "context_length": ctx,
            "max_model_len": ctx,  # vLLM's name for it
        }

    auth = (401,) if api_key else ()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **eng.stats()}

    @app.get("/v1/models", responses=error_responses(*auth))
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}", responses=error_responses(*auth, 404))
    async def model_info(name: str) -> dict[str, Any]:
        if name != model_name:
            raise APIError(404, f"model {name!r} not found", code="model_not_found")
        return model_card()

    gen_errors = error_responses(400, *auth, 404, 413, 429, 504, streams=True)
    app.post("/v1/completions", responses=gen_errors)(completions)
    app.post("/v1/chat/completions", responses=gen_errors)(chat_completions)
    if ui:
        from lumenlm.infer.ui import add_ui

        add_ui(app, model, model_name=model_name, template=template, engine=eng)

    keyless = PUBLIC if api_key else None
    app.openapi = openapi_without_422(app, keyless)  # type: ignore[method-assign]
    return app
