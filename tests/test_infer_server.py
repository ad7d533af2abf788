"""`lumenlm serve`: the official openai client, SSE streaming, concurrency, validation
(extreme values, invalid Unicode), the OpenAPI document, 405s, auth."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infer_helpers import _one_thread, make_model_dir, tok_path  # noqa: F401 (fixtures)
from lumenlm.cli import main as cli_main
from lumenlm.data.chat_template import ChatTemplate
from lumenlm.infer import generate
from lumenlm.infer.server import create_app
from lumenlm.modelio import load


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok_path: Path) -> Path:  # noqa: F811
    return make_model_dir(tmp_path_factory.mktemp("srv"), "tiny-gpt2", tok_path)


@pytest.fixture(scope="module")
def model(model_dir: Path):
    return load(model_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 in a background thread; yields the base URL."""
    import uvicorn

    app = create_app(model, model.tokenizer, model_name="tiny", max_tokens_cap=48)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server: str):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def cli_generate(model_dir: Path, capsys: pytest.CaptureFixture, *args: str) -> dict:
    capsys.readouterr()
    assert cli_main(["generate", str(model_dir), "--json", *args]) == 0
    [row] = json.loads(capsys.readouterr().out)
    return row


def test_health_and_models(server: str, client) -> None:
    assert httpx.get(server + "/health").json()["status"] == "ok"
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completions_match_cli_generate(client, model_dir: Path, capsys) -> None:
    settings = dict(temperature=0.9, top_p=0.95, seed=42, max_tokens=24)
    resp = client.completions.create(model="tiny", prompt="Once upon a time", **settings)
    row = cli_generate(
        model_dir,
        capsys,
        "--prompt",
        "Once upon a time",
        "--temperature",
        "0.9",
        "--top-p",
        "0.95",
        "--seed",
        "42",
        "--max-new-tokens",
        "24",
    )
    assert resp.choices[0].text == row["completion"]
    assert resp.choices[0].finish_reason == row["finish_reason"]
    assert resp.usage.completion_tokens == row["completion_tokens"]
    assert resp.usage.prompt_tokens == row["prompt_tokens"]
    stream = client.completions.create(
        model="tiny",
        prompt="Once upon a time",
        stream=True,
        stream_options={"include_usage": True},
        **settings,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == row["completion"]
    assert chunks[-2].choices[0].finish_reason == row["finish_reason"]
    assert (
        chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == row["completion_tokens"]
    )


def test_chat_completions_stream_and_not(client, model) -> None:
    messages = [
        {"role": "system", "content": "You are a librarian."},
        {"role": "user", "content": "Tell me a story"},
    ]
    settings = dict(temperature=0.8, seed=7, max_tokens=20)
    resp = client.chat.completions.create(model="tiny", messages=messages, **settings)
    content = resp.choices[0].message.content
    assert resp.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(model="tiny", messages=messages, stream=True, **settings)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # same as the library with the same template, seed and settings
    prompt = ChatTemplate().render(messages)
    [ref] = generate(model, prompt, temperature=0.8, seed=7, max_new_tokens=20, stop=["\nUser:"])
    assert content == ref.text.lstrip(" ")
    greedy = client.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=10, n=2
    )
    assert len(greedy.choices) == 2
    assert greedy.choices[0].message.content == greedy.choices[1].message.content


def test_max_tokens_is_capped(client) -> None:
    resp = client.completions.create(
        model="tiny", prompt="The", max_tokens=1000, temperature=0, extra_body={"ignore_eos": True}
    )
    assert resp.usage.completion_tokens <= 48


def _parse_sse(body: str) -> list[dict]:
    """Well-formed: 'data: ...' blocks separated by blank lines, ending with [DONE]."""
    blocks = body.split("\n\n")
    assert blocks[-1] == "" and blocks[-2] == "data: [DONE]"
    events = []
    for block in blocks[:-2]:
        assert block.startswith("data: ") and "\n" not in block, block
        events.append(json.loads(block[6:]))
    return events


def test_32_concurrent_streams(server: str, model) -> None:
    n = 32
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            body = {
                "prompt": f"The cat {i}",
                "max_tokens": 12,
                "temperature": 1.0,
                "seed": i,
                "stream": True,
            }
            with httpx.stream("POST", server + "/v1/completions", json=body, timeout=90) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                events = _parse_sse(r.read().decode())
            assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
            results[i] = "".join(e["choices"][0]["text"] for e in events)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, 120 - (time.time() - start)))
    assert not errors, errors[0]
    assert len(results) == n
    for i in (0, 13, 31):  # no corruption: each stream equals its own sequential generation
        [ref] = generate(model, f"The cat {i}", temperature=1.0, seed=i, max_new_tokens=12)
        assert results[i] == ref.text


def test_validation_errors_in_openai_shape(server: str) -> None:
    url = server + "/v1/completions"
    r = httpx.post(url, json={"prompt": "hi", "max_tokens": "ten"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and "max_tokens" in err["message"]
    r = httpx.post(url, json={"prompt": "hi", "max_tokens": 2, "frobnicate": {"x": 1}})
    assert r.status_code == 200  # unknown fields are ignored
    assert httpx.post(url, json={"max_tokens": 2}).status_code == 400  # prompt missing
    assert (
        httpx.post(
            url, content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    r = httpx.post(url, content=b'{"prompt":', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("body: invalid JSON")
    assert httpx.post(url, json={"prompt": [[1, 10**6]]}).status_code == 400
    assert httpx.post(url, json={"prompt": "hi", "temperature": 3}).status_code == 400
    assert httpx.post(url, json={"prompt": "hi", "seed": 2**64}).status_code == 400
    r = httpx.post(url, json={"prompt": "hi", "max_tokens": 2, "temperature": 1e-40})
    assert r.status_code == 200  # a denormal temperature decodes greedily
    r = httpx.post(
        server + "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]}
    )
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(url, json={"prompt": "x" * 1_100_000})
    assert r.status_code == 413 and "error" in r.json()
    r = httpx.get(server + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_prompt_longer_than_the_context_is_refused(
    server: str, model, model_dir: Path, capsys
) -> None:
    ctx = model.config.context_length
    long_text = "the cat sat on the mat " * ctx
    assert len(model.tokenizer.encode(long_text).ids) > ctx
    for path, body, param in [
        ("/v1/completions", {"prompt": long_text, "max_tokens": 2}, "prompt"),
        ("/v1/completions", {"prompt": [[5] * (ctx + 1)], "max_tokens": 2}, "prompt"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": long_text}]},
            "messages",
        ),
    ]:
        r = httpx.post(server + path, json=body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == param
        assert f"context length of {ctx} tokens" in err["message"]
    # exactly the context fits; the completion may run past it (the window slides)
    r = httpx.post(server + "/v1/completions", json={"prompt": [[5] * ctx], "max_tokens": 4})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == ctx
    # the CLI generates from the prompt's end and says so
    capsys.readouterr()
    assert (
        cli_main(["generate", str(model_dir), "--prompt", long_text, "--max-new-tokens", "2"]) == 0
    )
    assert "the model sees only its last" in capsys.readouterr().err


def test_generate_in_bf16(model_dir: Path, capsys) -> None:
    args = ("--prompt", "Once upon", "--max-new-tokens", "6", "--ignore-eos")
    fp32 = cli_generate(model_dir, capsys, *args)
    bf16 = cli_generate(model_dir, capsys, *args, "--dtype", "bf16")
    assert bf16["completion_tokens"] == fp32["completion_tokens"] == 6
    from lumenlm.cli.generate import load_model

    model = load_model(str(model_dir), "cpu", "bf16")  # what --dtype bf16 loads
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.new_cache(1).k.dtype == torch.bfloat16


def test_api_key(model) -> None:
    """With a key every path but /health needs it, the schema and its docs pages too."""
    from fastapi.testclient import TestClient

    app = create_app(model, model.tokenizer, model_name="tiny", max_tokens_cap=8, api_key="s3cret")
    key = {"Authorization": "Bearer s3cret"}
    with TestClient(app) as tc:
        assert tc.get("/health").status_code == 200
        for path in ("/v1/models", "/v1/models/tiny", "/openapi.json", "/docs", "/redoc", "/x"):
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
                r = tc.get(path, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
                assert r.headers["www-authenticate"] == "Bearer"
        for path in ("/v1/models", "/openapi.json", "/docs"):
            assert tc.get(path, headers=key).status_code == 200
        ok = tc.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers=key)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 2
        doc = tc.get("/openapi.json", headers=key).json()
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        for path, ops in doc["paths"].items():
            for op in ops.values():
                assert ("security" in op) == (path != "/health")
                assert path == "/health" or "401" in op["responses"]


def test_sizes_must_be_positive(model) -> None:
    for bad in ({"max_body_bytes": 0}, {"max_body_bytes": -1}, {"max_tokens_cap": 0}):
        with pytest.raises(ValueError, match=">= 1"):
            create_app(model, model.tokenizer, **bad)


# ----------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def tc(model) -> Iterator:
    """The app in process (no socket), answering 5xx as responses rather than raising."""
    from fastapi.testclient import TestClient

    app = create_app(model, model.tokenizer, model_name="tiny", max_tokens_cap=3)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _post(tc, path: str, body: dict) -> httpx.Response:
    """POST `body` as JSON as Python writes it: NaN/Infinity and lone surrogates included."""
    raw = json.dumps(body, allow_nan=True)  # ensure_ascii: "\ud800" stays an escape
    return tc.post(path, content=raw, headers={"content-type": "application/json"})


EXTREMES = [
    0,
    -1,
    1,
    2**63,
    -(2**70),
    0.0,
    -0.0,
    5e-324,
    1e-300,
    1e-5,
    0.5,
    2.0,
    2.0000001,
    1e300,
    math.inf,
    -math.inf,
    math.nan,
    None,
    True,
    "1",
]
value = st.one_of(
    st.sampled_from(EXTREMES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**80), 2**80),
)
FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "seed",
)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    fields=st.dictionaries(st.sampled_from(FIELDS), value, max_size=6),
    chat=st.booleans(),
)
def test_any_sampling_values_never_give_a_5xx(tc, fields: dict, chat: bool) -> None:
    """Whatever the numbers (out of range, NaN, inf, denormal, huge, wrong type): 200 with
    n choices when every value is allowed, else 400 in OpenAI's shape, never a 5xx."""
    if chat:
        body = {"messages": [{"role": "user", "content": "hi"}], **fields}
        r = _post(tc, "/v1/chat/completions", body)
    else:
        r = _post(tc, "/v1/completions", {"prompt": "hi", **fields})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        n = fields.get("n", 1)
        assert len(r.json()["choices"]) == n
        assert r.json()["usage"]["completion_tokens"] <= 3 * n
    else:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb", "\udc80", "ok \ud83d"])
def test_lone_surrogates_are_400_in_every_text_field(tc, bad: str) -> None:
    """A lone surrogate anywhere the server reads text is a 400 that says where."""
    s = json.loads(f'"{bad}"')
    msg = [{"role": "user", "content": "hi"}]
    cases = [
        ("/v1/completions", {"prompt": s}, "prompt"),
        ("/v1/completions", {"prompt": ["ok", s]}, "prompt[1]"),
        ("/v1/completions", {"prompt": "hi", "stop": s}, "stop"),
        ("/v1/completions", {"prompt": "hi", "stop": ["x", s]}, "stop[1]"),
        ("/v1/completions", {"prompt": "hi", "model": s}, "model"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": s}]}, "content"),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": s}, *msg]}, "[0]"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": s}]}]},
            "messages[0].content[0].text",
        ),
        ("/v1/chat/completions", {"messages": msg, "stop": [s]}, "stop[0]"),
    ]
    for path, body, where in cases:
        r = _post(tc, path, {"max_tokens": 1, **body})
        assert r.status_code == 400, (body, r.text)
        text = r.json()["error"]["message"]
        assert "not valid Unicode" in text and where in text and "\n" not in text
    good = _post(tc, "/v1/completions", {"prompt": json.loads('"\ud83d\ude00"'), "max_tokens": 1})
    assert good.status_code == 200  # a surrogate *pair* is one valid character


def test_openapi_documents_the_400_it_sends(tc) -> None:
    """No 422 anywhere in the document; every route that validates documents 400 with
    the error body, and what the server really sends matches that model."""
    from lumenlm.infer.schema import ErrorResponse

    doc = tc.get("/openapi.json").json()
    assert "422" not in json.dumps(doc) and "HTTPValidationError" not in json.dumps(doc)
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    posts = [(path, ops["post"]) for path, ops in doc["paths"].items() if "post" in ops]
    assert {p for p, _ in posts} == {"/v1/completions", "/v1/chat/completions"}
    for path, op in posts:
        for status in ("400", "413"):
            assert op["responses"][status]["content"]["application/json"]["schema"] == ref
        r = _post(tc, path, {"max_tokens": "ten"})
        assert r.status_code == 400
        ErrorResponse.model_validate(r.json())
    assert "404" in doc["paths"]["/v1/models/{name}"]["get"]["responses"]


def test_wrong_method_is_405_with_allow(tc) -> None:
    """Every route answers the methods it lacks with 405 and an Allow header naming its own."""
    from starlette.routing import Route

    routes = [r for r in tc.app.routes if isinstance(r, Route)]
    assert routes
    for route in routes:
        path = route.path.replace("{name}", "tiny")
        allowed = set(route.methods or ())
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - allowed:
            r = tc.request(method, path)
            assert r.status_code == 405, (method, path)
            assert set(r.headers["allow"].replace(" ", "").split(",")) == allowed
            assert r.json()["error"]["message"]
