"""The OpenAI endpoints' work, behind `server.create_app`'s routes: a request becomes
encoded rows and `SamplingParams` (the field mapping itself is `schema.to_params`), rows go
to the batch engine through `bridge.EngineCall`, and its events become OpenAI's bodies or
server-sent events (`responses` shapes them).

One `OpenAIHandlers` per app holds what every request needs (the model, its tokenizer and
template, the engine, the limits); its methods hold no state between requests. Each prompt
is encoded once, in a worker thread, so a long one does not stall the event loop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from lumenlm.data.chat_template import ChatTemplate, render_fitted
from lumenlm.infer import responses as R
from lumenlm.infer.batch_engine import BatchEngine, QueueFull
from lumenlm.infer.bridge import EngineCall
from lumenlm.infer.generate import encode_prompts
from lumenlm.infer.sampling import SamplingParams
from lumenlm.infer.schema import (
    MAX_N,
    APIError,
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    to_params,
)
from lumenlm.model import GPT

RETRY_AFTER_S = 1  # what a 429 tells the client to wait


class OpenAIHandlers:
    """`/v1/completions`, `/v1/chat/completions` and the model card for one served model."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Any,
        engine: BatchEngine,
        *,
        model_name: str,
        template: ChatTemplate,
        max_tokens_cap: int,
        request_timeout: float | None,
    ) -> None:
        self.model, self.tokenizer, self.eng = model, tokenizer, engine
        self.model_name, self.template = model_name, template
        self.max_tokens_cap, self.request_timeout = max_tokens_cap, request_timeout
        self.ctx = model.config.context_length
        self.created = int(time.time())
        self.token_text = R.TokenText(tokenizer)
        self.chat_stop_ids = tuple(template.stop_token_ids(tokenizer))

    def check_model(self, req: SamplingRequest) -> None:
        if req.model is not None and req.model != self.model_name:
            raise APIError(
                404,
                f"The model {req.model!r} does not exist; this server serves {self.model_name!r} "
                "(see /v1/models)",
                code="model_not_found",
                param="model",
            )

    def params_of(self, req: SamplingRequest, max_tokens: int, **extra: Any) -> SamplingParams:
        try:
            params = to_params(req, max_tokens, self.max_tokens_cap, extra.pop("stop", ()))
            params = replace(params, **extra) if extra else params
            params.check_vocab(self.model.config.vocab_size)  # logit_bias ids
            return params
        except ValueError as exc:
            raise APIError(400, str(exc), param=str(exc).split(":")[0].split(" ")[0]) from None

    def check_length(self, prompts: list[list[int]], param: str) -> None:
        """A prompt the self.model cannot see whole is refused, as OpenAI does, rather than
        silently cut (the completion may run past the context: the window slides)."""
        longest = max((len(p) for p in prompts), default=0)
        if longest > self.ctx:
            raise APIError(
                400,
                f"{param}: {longest} tokens, more than this model's context length of "
                f"{self.ctx} tokens; shorten it",
                code="context_length_exceeded",
                param=param,
            )

    def check_rows(self, prompts: list[list[int]], n: int) -> None:
        if len(prompts) * n > MAX_N:
            raise APIError(400, f"at most {MAX_N} completions per request (prompts x n)")

    def prepare_completion(self, req: CompletionRequest) -> tuple[list[list[int]], SamplingParams]:
        self.check_model(req)
        try:
            prompts = encode_prompts(req.prompt, self.tokenizer, self.model.config.vocab_size)  # type: ignore[arg-type]
        except ValueError as exc:
            raise APIError(400, f"prompt: {exc}", param="prompt") from None
        self.check_length(prompts, "prompt")
        self.check_rows(prompts, req.n)
        return prompts, self.params_of(req, 16 if req.max_tokens is None else req.max_tokens)

    def prepare_chat(self, req: ChatRequest) -> tuple[list[int], SamplingParams]:
        self.check_model(req)
        max_tokens = (
            req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        )
        params = self.params_of(
            req,
            self.max_tokens_cap if max_tokens is None else max_tokens,
            stop=self.template.stop,
            stop_token_ids=self.chat_stop_ids,
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
        text = render_fitted(msgs, self.template, self.tokenizer, self.ctx, params.max_new_tokens)
        prompt = self.tokenizer.encode(text).ids
        self.check_length(
            [prompt], "messages"
        )  # older turns were dropped; the last ones still do not fit
        self.check_rows([prompt], req.n)
        return prompt, params

    def start(
        self,
        rows: Sequence[Sequence[int]],
        params: SamplingParams,
        logprobs: int | None,
        echo: bool,
    ) -> EngineCall:
        try:
            return EngineCall(
                self.eng,
                rows,
                params,
                logprobs=logprobs,
                prompt_logprobs=echo and logprobs is not None,
                timeout=self.request_timeout,
            )
        except QueueFull:
            raise APIError(
                429,
                f"the server is busy (all {self.eng.slots} slots in use and the queue full); "
                f"retry in {RETRY_AFTER_S} s",
                type_="rate_limit_error",
                code="server_busy",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None

    def include_usage(self, req: SamplingRequest) -> bool:
        return bool((req.stream_options or {}).get("include_usage"))

    def timeout_error(self) -> APIError:
        return APIError(
            504,
            f"the request ran past the server's {self.request_timeout:g} s timeout; ask for fewer "
            "tokens or retry later",
            type_="timeout",
        )

    # -- completions ------------------------------------------------------------------------
    async def completions(self, req: CompletionRequest, request: Request) -> Any:
        prompts, params = await run_in_threadpool(self.prepare_completion, req)
        rows = [p for p in prompts for _ in range(req.n)]
        call = self.start(rows, params, req.logprobs, req.echo)
        base = R.response_base(self.model_name, "cmpl", "text_completion")
        prompt_tokens = sum(len(p) for p in prompts)
        echo_text = [self.tokenizer.decode(r) if req.echo else "" for r in rows]
        if req.stream:
            return StreamingResponse(
                self.completion_stream(req, call, rows, base, echo_text, prompt_tokens),
                media_type="text/event-stream",
            )
        texts, reasons, lps, counts = await self.collect(call, request, echo_text)
        choices = []
        for i, seq in enumerate(call.seqs):
            logprobs = None
            if req.logprobs is not None:
                logprobs = R.completion_logprobs(lps[i], self.token_text, len(echo_text[i]))
                if req.echo:
                    echoed = R.echo_logprobs(rows[i], seq.prompt_logprobs or [], self.token_text)
                    logprobs = R.merge_completion_logprobs(
                        echoed, R.completion_logprobs(lps[i], self.token_text)
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

    async def collect(
        self, call: EngineCall, request: Request, starts: list[str]
    ) -> tuple[list[list[str]], list[str | None], list[list], list[int]]:
        """A whole (not streamed) answer: per row its text pieces (after `starts[i]`),
        finish reason, token logprobs and token count. An engine error is a 500, the
        deadline a 504; a client that went away cancels the call."""
        texts = [[t] for t in starts]
        reasons: list[str | None] = [None] * len(starts)
        lps: list[list] = [[] for _ in starts]
        counts = [0] * len(starts)
        async for i, ev in call.events(request.is_disconnected):
            if ev.error:
                raise APIError(500, ev.error, type_="server_error")
            if ev.finish_reason == "timeout":
                raise self.timeout_error()
            texts[i].append(ev.text)
            counts[i] += len(ev.token_ids)
            lps[i] += ev.logprobs or []
            reasons[i] = ev.finish_reason or reasons[i]
        return texts, reasons, lps, counts

    def completion_stream(
        self,
        req: CompletionRequest,
        call: EngineCall,
        rows: list[list[int]],
        base: Any,
        echo_text: list[str],
        prompt_tokens: int,
    ) -> AsyncIterator[str]:
        offsets = [len(t) for t in echo_text]

        def head() -> list[dict[str, Any]]:  # read once the stream runs: after the prefill
            out = []
            for i, text in enumerate(echo_text):
                if text:
                    lp = None
                    if req.logprobs is not None:
                        lp = R.echo_logprobs(
                            rows[i], call.seqs[i].prompt_logprobs or [], self.token_text
                        )
                    out.append({"index": i, "text": text, "logprobs": lp, "finish_reason": None})
            return out

        def choice(i: int, ev: Any) -> dict[str, Any] | None:
            lp = None
            if req.logprobs is not None and ev.logprobs:
                lp = R.completion_logprobs(ev.logprobs, self.token_text, offsets[i])
                offsets[i] += sum(len(t) for t in lp["tokens"])
            if not (ev.text or lp or ev.finish_reason):
                return None
            return {"index": i, "text": ev.text, "logprobs": lp, "finish_reason": ev.finish_reason}

        return self.stream(req, call, base, prompt_tokens, len(rows), head, choice)

    async def stream(
        self,
        req: CompletionRequest | ChatRequest,
        call: EngineCall,
        base: Any,
        prompt_tokens: int,
        n: int,
        head: Callable[[], list[dict[str, Any]]],
        choice: Callable[[int, Any], dict[str, Any] | None],
    ) -> AsyncIterator[str]:
        """The server-sent events of a streamed answer, for completions and chat alike: the
        choices `head()` gives when the stream starts, then one chunk per engine event that
        `choice` turns into a choice (None: nothing to send), an error chunk if the engine
        fails or times out, the usage chunk when asked for, and [DONE]; the call is
        cancelled however the stream ends (a disconnected client frees its slots at once)."""
        counts = [0] * n
        for c in head():
            yield R.sse(base([c]))
        try:
            async for i, ev in call.events():
                if ev.error or ev.finish_reason == "timeout":
                    yield R.sse_error(ev.error or self.timeout_error().message)
                    call.cancel()
                    break
                counts[i] += len(ev.token_ids)
                c = choice(i, ev)
                if c is not None:
                    yield R.sse(base([c]))
            else:
                if self.include_usage(req):
                    yield R.sse({**base([]), "usage": R.usage(prompt_tokens, sum(counts))})
        finally:
            call.cancel()
        yield R.DONE

    # -- chat ----------------------------------------------------------------------------
    async def chat_completions(self, req: ChatRequest, request: Request) -> Any:
        prompt, params = await run_in_threadpool(self.prepare_chat, req)
        top = (req.top_logprobs or 0) if req.logprobs else None
        call = self.start([prompt] * req.n, params, top, False)
        base = R.response_base(
            self.model_name, "chatcmpl", "chat.completion.chunk", system_fingerprint=None
        )
        if req.stream:
            return StreamingResponse(
                self.chat_stream(req, call, base, len(prompt), top), media_type="text/event-stream"
            )
        texts, reasons, lps, counts = await self.collect(call, request, [""] * req.n)
        choices = [
            {
                "index": i,
                "logprobs": R.chat_logprobs(lps[i], self.token_text, top)
                if top is not None
                else None,
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

    def chat_stream(
        self, req: ChatRequest, call: EngineCall, base: Any, prompt_tokens: int, top: int | None
    ) -> AsyncIterator[str]:
        started = [False] * req.n

        def head() -> list[dict[str, Any]]:
            delta = {"role": "assistant", "content": ""}
            return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}
                    for i in range(req.n)]  # fmt: skip

        def choice(i: int, ev: Any) -> dict[str, Any] | None:
            text = ev.text
            if not started[i]:  # drop the space after "Assistant:", as the REPL does
                text = text.lstrip(" ")
                started[i] = bool(text)
            lp = (
                R.chat_logprobs(ev.logprobs, self.token_text, top)
                if top is not None and ev.logprobs
                else None
            )
            if not (text or lp or ev.finish_reason):
                return None
            delta = {"content": text} if text or not ev.finish_reason else {}
            return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": ev.finish_reason}

        return self.stream(req, call, base, prompt_tokens, req.n, head, choice)

    # -- routes ----------------------------------------------------------------------------
    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "lumenlm",
            "context_length": self.ctx,
            "max_model_len": self.ctx,  # vLLM's name for it
        }
