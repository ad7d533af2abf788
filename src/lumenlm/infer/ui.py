"""The web playground at `/`: static files shipped in the package, and two JSON endpoints.

The page (`infer/static/`: plain HTML, CSS and JavaScript, no build step, nothing
fetched from any other host, which its Content-Security-Policy enforces) talks to the
same OpenAI API as any client: chat and completions stream from `/v1/...`. Two small
endpoints serve the model view:

- `GET /ui/info`: the model id, its card (README.md of the model or run directory),
  architecture (config), exact parameter count (tied weights once) and chat template;
- `POST /ui/inspect {"text": ...}`: attention maps, logit lens and per-token loss of the
  model on that text, from `lumenlm.inspect`'s public functions. They hook the model,
  so they run on the engine thread between two decode steps (`BatchEngine.call`).

With an API key the page itself (`/`, `/static/...`) is public, holds no data, and asks
for the key; everything it fetches needs the key like any other client.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from lumenlm.data.chat_template import ChatTemplate
from lumenlm.infer.batch_engine import BatchEngine
from lumenlm.infer.schema import APIError, error_responses
from lumenlm.model import GPT

STATIC = Path(__file__).with_name("static")
MAX_INSPECT_TOKENS = 256  # attention maps grow with the square of the text's length
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
PAGE_PATHS = frozenset({"/", "/favicon.ico"})
STATIC_PREFIX = "/static/"


class InspectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(min_length=1, max_length=20_000)
    top_k: int = Field(5, ge=1, le=20)


def find_card(model_dir: Path | None) -> str:
    """The model card: README.md in the model directory, or in its run directory."""
    if model_dir is None:
        return ""
    for d in (model_dir, *model_dir.resolve().parents[:2]):
        card = d / "README.md"
        if card.is_file():
            return card.read_text(encoding="utf-8", errors="replace")
    return ""


def model_info(model: GPT, model_name: str, template: ChatTemplate) -> dict[str, Any]:
    """What the model view shows: id, card, architecture, exact parameter count, template."""
    unique = {id(p): p.numel() for p in model.parameters()}  # tied weights counted once
    return {
        "id": model_name,
        "card": find_card(getattr(model, "model_dir", None)),
        "config": asdict(model.config),
        "parameters": sum(unique.values()),
        "template": template.to_dict(),
    }


def add_ui(
    app: FastAPI, model: GPT, *, model_name: str, template: ChatTemplate, engine: BatchEngine
) -> None:
    """Serve the playground at `/` and its endpoints on `app`."""
    info = model_info(model, model_name, template)

    def page(path: Path) -> FileResponse:
        return FileResponse(path, headers={"Content-Security-Policy": CSP})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return page(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.mount(STATIC_PREFIX.rstrip("/"), StaticFiles(directory=STATIC), name="static")

    @app.get("/ui/info", include_in_schema=False)
    async def ui_info() -> dict[str, Any]:
        return info

    @app.post("/ui/inspect", include_in_schema=False, responses=error_responses(400))
    async def ui_inspect(req: InspectRequest) -> dict[str, Any]:
        from lumenlm.inspect import attention_maps, logit_lens, token_losses

        tok = model.tokenizer
        n = len(tok.encode(req.text).ids)
        if n > MAX_INSPECT_TOKENS:
            raise APIError(
                400,
                f"text: {n} tokens; the model view inspects at most {MAX_INSPECT_TOKENS}",
                param="text",
            )

        def run() -> dict[str, Any]:
            return {
                "attention": attention_maps(model, tok, req.text),
                "logit_lens": logit_lens(model, tok, req.text, req.top_k),
                "token_loss": token_losses(model, tok, req.text, req.top_k),
            }

        try:
            return await asyncio.wrap_future(engine.call(run))
        except ValueError as exc:  # e.g. a text longer than the context
            raise APIError(400, f"text: {exc}", param="text") from None
