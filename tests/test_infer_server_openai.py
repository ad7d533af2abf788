"""The OpenAI fields real clients send, through the official `openai` client: n > 1,
logprobs (completions and chat), stream_options.include_usage, stop lists, seed, echo,
logit_bias, penalties, finish_reason, usage, /v1/models; and the errors: unsupported
fields, a wrong model, unknown endpoints, a full queue (429), a client that leaves."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from infer_helpers import _one_thread, make_model_dir, serve_app, tok_path  # noqa: F401
from lumenlm.infer import generate
from lumenlm.infer.server import create_app
from lumenlm.modelio import load

openai = pytest.importorskip("openai", reason="the official client is the peer under test")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tok_path: Path):  # noqa: F811
    return load(make_model_dir(tmp_path_factory.mktemp("oai"), "tiny", tok_path))


@pytest.fixture(scope="module")
def server(model) -> Iterator[str]:
    yield from serve_app(create_app(model, model.tokenizer, model_name="tiny", max_tokens_cap=64))


@pytest.fixture(scope="module")
def client(server: str):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_carry_the_context_length(client, model) -> None:
    [card] = client.models.list().data
    assert card.id == "tiny" and card.context_length == model.config.context_length


def test_n_seed_stop_list_and_usage(client, model) -> None:
    kw = dict(model="tiny", prompt="The cat", max_tokens=12, temperature=1.0, seed=9, n=2)
    resp = client.completions.create(**kw, stop=["d", "zz"])
    refs = generate(
        model, ["The cat"] * 2, temperature=1.0, seed=9, max_new_tokens=12, stop=["d", "zz"]
    )
    assert [c.text for c in resp.choices] == [r.text for r in refs]
    assert [c.finish_reason for c in resp.choices] == [r.finish_reason for r in refs]
    assert [c.index for c in resp.choices] == [0, 1]
    prompt_len = len(model.tokenizer.encode("The cat").ids)
    assert resp.usage.prompt_tokens == prompt_len  # the prompt counts once, not n times
    assert resp.usage.completion_tokens == sum(r.completion_tokens for r in refs)


def test_streaming_include_usage_and_n2(client) -> None:
    kw = dict(model="tiny", prompt="Once", max_tokens=10, temperature=0.8, seed=4, n=2)
    whole = client.completions.create(**kw)
    chunks = list(
        client.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    texts = ["", ""]
    reasons = [None, None]
    for c in chunks[:-1]:
        for ch in c.choices:
            texts[ch.index] += ch.text
            reasons[ch.index] = ch.finish_reason or reasons[ch.index]
    assert texts == [c.text for c in whole.choices]
    assert reasons == [c.finish_reason for c in whole.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_completion_logprobs_and_echo_are_the_models(client, model) -> None:
    tok = model.tokenizer
    prompt = "The little girl played"
    resp = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=4, temperature=0, logprobs=2, echo=True
    )
    choice = resp.choices[0]
    lp = choice.logprobs
    ids = tok.encode(prompt).ids
    [ref_gen] = generate(model, prompt, temperature=0, max_new_tokens=4)
    all_ids = ids + ref_gen.token_ids
    assert choice.text == prompt + ref_gen.text
    assert lp.token_logprobs[0] is None and len(lp.tokens) == len(all_ids)
    assert lp.tokens == [tok.decode([t], skip_special_tokens=False) for t in all_ids]
    with torch.inference_mode():
        ref = torch.log_softmax(model(torch.tensor([all_ids])).logits[0].float(), -1)
    for j in range(1, len(all_ids)):
        assert lp.token_logprobs[j] == pytest.approx(float(ref[j - 1, all_ids[j]]), abs=1e-4)
        assert len(lp.top_logprobs[j]) <= 2
    for j in range(len(ids), len(all_ids)):  # greedy: each new token is its position's top
        assert lp.token_logprobs[j] == pytest.approx(max(lp.top_logprobs[j].values()), abs=1e-6)
    assert lp.text_offset[:2] == [0, len(lp.tokens[0])]
    scored = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    assert scored.choices[0].text == prompt and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        lp.token_logprobs[1 : len(ids)], abs=1e-5
    )


def test_chat_logprobs_top_logprobs_and_stream(client, model) -> None:
    msgs = [{"role": "user", "content": "Tell me about the moon"}]
    resp = client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = resp.choices[0].logprobs.content
    assert 1 <= len(content) <= 6 and all(len(c.top_logprobs) == 3 for c in content)
    for c in content:  # greedy: the chosen token is the top alternative, probabilities sum < 1
        assert c.top_logprobs[0].logprob == pytest.approx(c.logprob)
        assert sum(math.exp(t.logprob) for t in c.top_logprobs) <= 1 + 1e-5
    streamed = list(
        client.chat.completions.create(
            model="tiny",
            messages=msgs,
            max_tokens=6,
            temperature=0,
            logprobs=True,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    got = [
        c
        for ch in streamed
        if ch.choices and ch.choices[0].logprobs
        for c in ch.choices[0].logprobs.content
    ]
    assert [c.logprob for c in got] == pytest.approx([c.logprob for c in content], abs=1e-5)
    assert streamed[-1].usage.completion_tokens == resp.usage.completion_tokens


def test_logit_bias_and_penalties_are_applied(client, model) -> None:
    tok = model.tokenizer
    base = client.completions.create(model="tiny", prompt="the cat", max_tokens=12, temperature=0)
    ids = tok.encode(base.choices[0].text).ids
    banned = {str(t): -100 for t in set(ids)}
    biased = client.completions.create(
        model="tiny", prompt="the cat", max_tokens=12, temperature=0, logit_bias=banned
    )
    assert not set(tok.encode(biased.choices[0].text).ids) & set(ids)
    forced = client.completions.create(
        model="tiny", prompt="the cat", max_tokens=5, temperature=0, logit_bias={str(ids[0]): 100}
    )
    assert tok.encode(forced.choices[0].text).ids == [ids[0]] * 5
    penalised = client.completions.create(
        model="tiny",
        prompt="the cat",
        max_tokens=12,
        temperature=0,
        frequency_penalty=2.0,
        presence_penalty=2.0,
    )
    ref = generate(
        model,
        "the cat",
        temperature=0,
        max_new_tokens=12,
        frequency_penalty=2.0,
        presence_penalty=2.0,
    )[0]
    assert penalised.choices[0].text == ref.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "response_format": {"type": "json_object"}}, "response_format"),
        ({"prompt": "x", "tools": []}, "tools"),
        ({"prompt": "x", "logit_bias": {"99999": 5}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"cat": 5}}, "logit_bias"),
    ],
)
def test_unimplemented_fields_and_bad_values_are_400_naming_them(
    server: str, body: dict, field: str
) -> None:
    r = httpx.post(server + "/v1/completions", json=body)
    assert r.status_code == 400 and field in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == field


def test_image_parts_wrong_model_unknown_endpoint(server: str, client) -> None:
    img = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    r = httpx.post(
        server + "/v1/chat/completions", json={"messages": [{"role": "user", "content": img}]}
    )
    assert r.status_code == 400 and "image_url" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as exc:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert exc.value.body["code"] == "model_not_found"
    r = httpx.post(server + "/v1/embeddings", json={"input": "x"})
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_full_queue_is_429_and_a_disconnect_frees_the_slot(model) -> None:
    app = create_app(
        model, model.tokenizer, model_name="t", slots=1, max_queue=0, max_tokens_cap=100_000
    )
    for url in serve_app(app):
        long = {"prompt": "a", "max_tokens": 100_000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=long, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            assert httpx.get(url + "/health").json()["active"] == 1
            busy = httpx.post(url + "/v1/completions", json={"prompt": "b", "max_tokens": 2})
            assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
            assert busy.json()["error"]["type"] == "rate_limit_error"
            steps = httpx.get(url + "/health").json()["steps"]
        deadline = time.time() + 30  # closed mid-stream: the slot is free within a few steps
        while (h := httpx.get(url + "/health").json())["active"]:
            assert time.time() < deadline, h
            time.sleep(0.02)
        assert h["steps"] - steps < 200  # not the 100 000 tokens it asked for
        ok = httpx.post(url + "/v1/completions", json={"prompt": "b", "max_tokens": 2})
        assert ok.status_code == 200
