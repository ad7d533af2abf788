"""OpenAI request shapes (pydantic) and errors in OpenAI's JSON shape, for the server.

Strict types (a string where a number belongs is an error, not coerced). Fields a
client sends that change nothing here (`user`, `metadata`, `store`, ...) are ignored;
fields whose meaning this server does not implement (`suffix`, `best_of`,
`response_format`, `tools`, image parts, ...; see `UNSUPPORTED`) are a 400 that names
the field, never accepted and ignored. `to_params` maps a request to `SamplingParams`:
the one place a request's fields become sampling settings. Every sampling number has a finite range (NaN and Infinity are
refused too), the same as `SamplingParams` enforces, so a request can never make the
sampler's probabilities non-finite. Text that is not valid Unicode (a lone surrogate
such as `"\ud800"`, in any field) is refused before it reaches the tokenizer.
All of these are 400s with `ErrorResponse`'s body, and the OpenAPI document says so.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Annotated, Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from lumenlm.infer.sampling import (
    LOGIT_BIAS_RANGE,
    PENALTY_RANGE,
    REPETITION_PENALTY_RANGE,
    SamplingParams,
)
from lumenlm.infer.text import first_surrogate

MAX_N = 16  # rows per request (prompts x n)


def _integral(value: Any) -> Any:
    """JSON Schema's "integer" includes 2.0: a float without a fractional part is that int
    (anything else, a string included, is left for the strict check to refuse)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def integer(**bounds: int) -> Any:
    """An int field type with `bounds` (ge=, le=, lt=) that takes 2.0 as 2 (`_integral`)."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


TokenId = integer(ge=0)
StopText = Annotated[str, Field(min_length=1)]
MAX_STOP = 4  # stop strings per request, as OpenAI allows
MAX_LOGPROBS = 5  # completions' `logprobs`, as OpenAI allows
MAX_TOP_LOGPROBS = 20  # chat's `top_logprobs`, as OpenAI allows

# Request fields whose meaning this server does not implement: a 400 naming the field
# (a client relying on one would otherwise get a silently different answer).
UNSUPPORTED_COMMON = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)
UNSUPPORTED_COMPLETION = ("suffix", "best_of")


class SamplingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model: str | None = None
    max_tokens: integer(ge=0) | None = None
    temperature: float | None = Field(None, ge=0, le=2)  # OpenAI range
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: integer(ge=-1, le=2**31 - 1) | None = None  # -1 / 0 = off; >= vocab = off
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(
        None, ge=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1]
    )
    n: integer(ge=1, le=MAX_N) = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None = None
    seed: integer(ge=-(2**63), lt=2**63) | None = None
    presence_penalty: float | None = Field(None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    frequency_penalty: float | None = Field(None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False  # vLLM's extra field: keep going past <|endoftext|>

    unsupported: ClassVar[tuple[str, ...]] = UNSUPPORTED_COMMON

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        """Refuse a lone surrogate in any field this request reads (see text.py), and
        the fields this server does not implement (`UNSUPPORTED_*`)."""
        if isinstance(data, dict):
            for name in cls.unsupported:
                if data.get(name) is not None and not (name == "best_of" and data[name] == 1):
                    raise ValueError(f"{name}: not supported by this server; remove the field")
            for name in cls.model_fields:
                where = _surrogate_path(data.get(name), name)
                if where is not None:
                    raise ValueError(
                        f"{where} is not valid Unicode (a lone surrogate, \\ud800-\\udfff "
                        "unpaired); send UTF-8 text"
                    )
        return data


def _surrogate_path(value: Any, path: str) -> str | None:
    """Where in `value` (a JSON value) the first string with a lone surrogate is."""
    if isinstance(value, str):
        return path if first_surrogate(value) is not None else None
    if isinstance(value, list):
        items: Any = enumerate(value)
        fmt = "{}[{}]"
    elif isinstance(value, dict):
        items = value.items()
        fmt = "{}.{}"
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and first_surrogate(key) is not None:
            return path
        found = _surrogate_path(item, fmt.format(path, key))
        if found is not None:
            return found
    return None


class CompletionRequest(SamplingRequest):
    unsupported: ClassVar[tuple[str, ...]] = UNSUPPORTED_COMMON + UNSUPPORTED_COMPLETION
    logprobs: integer(ge=0, le=MAX_LOGPROBS) | None = None
    echo: bool = False
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_N)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[list[TokenId]], Field(min_length=1, max_length=MAX_N)]
    )


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: str = "text"  # image_url, input_audio, file: refused by ChatRequest
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: integer(ge=0) | None = None
    logprobs: bool = False
    top_logprobs: integer(ge=0, le=MAX_TOP_LOGPROBS) | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_parts_only(cls, data: Any) -> Any:
        """Image, audio and file parts are a 400 naming the part, not silently dropped."""
        messages = data.get("messages") if isinstance(data, dict) else None
        for i, m in enumerate(messages if isinstance(messages, list) else []):
            content = m.get("content") if isinstance(m, dict) else None
            for j, part in enumerate(content if isinstance(content, list) else []):
                kind = part.get("type", "text") if isinstance(part, dict) else "text"
                if kind != "text":
                    raise ValueError(
                        f"messages[{i}].content[{j}].type: {kind!r} parts are not supported "
                        "(this model reads text only); send text parts"
                    )
        return data

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs: true")
        return self


def stop_list(req: SamplingRequest) -> list[str]:
    """The request's stop strings as a list."""
    return [req.stop] if isinstance(req.stop, str) else list(req.stop or [])


def to_params(
    req: SamplingRequest, max_tokens: int, cap: int, extra_stop: Collection[str] = ()
) -> SamplingParams:
    """The request's sampling settings (`max_tokens` capped at `cap`). Raises ValueError
    naming the field for a value `SamplingParams` refuses."""
    top_k = req.top_k if req.top_k is not None and req.top_k > 0 else None
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        if not key.lstrip("-").isdigit():
            raise ValueError(f"logit_bias: keys are token ids as strings, got {key!r}")
        if not LOGIT_BIAS_RANGE[0] <= value <= LOGIT_BIAS_RANGE[1]:
            raise ValueError(
                f"logit_bias: values must be in [{LOGIT_BIAS_RANGE[0]:g}, "
                f"{LOGIT_BIAS_RANGE[1]:g}], got {value}"
            )
        bias[int(key)] = value
    return SamplingParams(
        max_new_tokens=min(max_tokens, cap),
        temperature=1.0 if req.temperature is None else req.temperature,
        top_k=top_k,
        top_p=1.0 if req.top_p is None else req.top_p,
        min_p=req.min_p or 0.0,
        repetition_penalty=req.repetition_penalty or 1.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=bias,
        seed=req.seed,
        stop=tuple(dict.fromkeys([*stop_list(req), *extra_stop])),
        ignore_eos=req.ignore_eos,
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error's body (OpenAI's shape)."""

    error: ErrorDetail


class APIError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type_,
            code,
            param,
        )
        self.headers = headers


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# ----------------------------------------------------------------------------- OpenAPI

ERROR_DOCS = {
    400: "invalid request: not JSON, a wrong type, a value out of range, text that is not "
    "valid Unicode, a prompt longer than the context, too many completions",
    401: "missing or wrong API key (Authorization: Bearer KEY)",
    404: "no such model (code model_not_found)",
    413: "request body too large",
    429: "every slot busy and the queue full; retry after Retry-After seconds",
    504: "the request ran past the server's --request-timeout",
}


STREAMED = {
    "description": "the completion; with `stream: true`, server-sent events (`data: {chunk}`"
    " lines, the last one `data: [DONE]`)",
    "content": {"text/event-stream": {}},
}


def error_responses(*codes: int, streams: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all with `ErrorResponse`'s body;
    `streams`: the 200 may also be an event stream."""
    docs: dict[int | str, dict[str, Any]] = {200: STREAMED} if streams else {}
    return docs | {c: {"model": ErrorResponse, "description": ERROR_DOCS[c]} for c in codes}


def openapi_without_422(
    app: FastAPI, key_exempt: Collection[str] | None = None
) -> Callable[[], dict[str, Any]]:
    """FastAPI's OpenAPI document minus the 422 it adds to every route with a body: this
    server answers validation errors with 400 (documented per route, see `error_responses`).
    With `key_exempt` (the server has an API key; these paths do not need it), the
    bearer scheme is declared and required by every other route."""
    with_key = key_exempt is not None
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = default()
            for path, ops in doc.get("paths", {}).items():
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)
                    if key_exempt is not None and path not in key_exempt:
                        op["security"] = [{"bearer": []}]
            schemas = doc.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            if with_key:
                doc.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}
                }
            app.openapi_schema = doc
        return app.openapi_schema

    return openapi


def install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's `{"error": {...}}` shape: validation errors as 400 (not
    FastAPI's 422), `APIError`s as they are, unknown paths as a 404 naming the endpoints,
    and other HTTP errors (405 with its `Allow`) with their headers."""

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
