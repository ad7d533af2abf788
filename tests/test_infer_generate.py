"""generate / stream_generate: KV cache == recompute, batching, sliding, stops, streaming."""

from __future__ import annotations

import pytest
import torch

from infer_helpers import _one_thread, make_model, tok, tok_path  # noqa: F401 (fixtures)
from lumenlm.infer import generate, stream_generate
from lumenlm.infer.detok import IncrementalDecoder, StopMatcher
from lumenlm.infer.engine import Decoder

PROMPTS = ["Once upon a time", "The cat", "Hello there my little friend who played in the park"]
PRESETS = ["tiny", "tiny-gpt2"]  # RoPE + GQA, learned positions


@pytest.fixture(scope="module", params=PRESETS)
def model(request: pytest.FixtureRequest):
    return make_model(request.param)


def ids_of(results: list) -> list[list[int]]:
    return [r.token_ids for r in results]


def test_cache_equals_recompute_batched_and_unbatched(model, tok) -> None:  # noqa: F811
    kw = dict(tokenizer=tok, temperature=0, max_new_tokens=40, ignore_eos=True)
    cached = generate(model, PROMPTS, **kw)
    full = generate(model, PROMPTS, use_cache=False, **kw)
    assert ids_of(cached) == ids_of(full)
    assert all(len(r.token_ids) == 40 for r in cached)
    for prompt, batched in zip(PROMPTS, cached):
        [one] = generate(model, prompt, **kw)
        [one_full] = generate(model, prompt, use_cache=False, **kw)
        assert one.token_ids == one_full.token_ids == batched.token_ids
        assert one.text == batched.text


def test_cache_matches_manual_argmax_loop(model) -> None:
    """Reference without any of our machinery: argmax over the full forward, token ids in."""
    prompt = [5, 17, 42, 99, 3]
    [res] = generate(model, prompt, temperature=0, max_new_tokens=12)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert res.token_ids == seq[len(prompt) :]


def test_should_stop_ends_generation_early(model) -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    [res] = generate(model, [5, 17, 42], temperature=0, max_new_tokens=50, should_stop=stop)
    assert len(res.token_ids) == 5


@pytest.mark.parametrize("preset", PRESETS)
def test_sliding_past_context_length(preset: str, tok) -> None:  # noqa: F811
    """ctx 64: generate well past the (learned) position table; cache == recompute."""
    model = make_model(preset)
    ctx = model.config.context_length
    long_prompt = "the cat sat on the mat and the dog ran to the house " * 6
    prompts = [long_prompt, "A small red ball"]
    assert len(tok.encode(long_prompt).ids) > ctx  # cropped to the window, then slides
    kw = dict(tokenizer=tok, temperature=0, max_new_tokens=150, ignore_eos=True)
    cached = generate(model, prompts, **kw)
    full = generate(model, prompts, use_cache=False, **kw)
    assert ids_of(cached) == ids_of(full)
    assert all(len(r.token_ids) == 150 for r in cached)
    for p, r in zip(prompts, cached):  # per-row sliding: batch-mates do not matter
        assert generate(model, p, **kw)[0].token_ids == r.token_ids
    kept = generate(model, prompts, window_keep=ctx - 1, **kw)  # slide every token
    assert ids_of(kept) == ids_of(
        generate(model, prompts, window_keep=ctx - 1, use_cache=False, **kw)
    )


def test_decoder_never_exceeds_context() -> None:
    model = make_model("tiny-gpt2")
    ctx = model.config.context_length
    dec = Decoder(model, [[1] * 10, [2] * 70], max_new_tokens=200)
    logits = dec.prefill()
    for _ in range(200):
        t = logits.argmax(-1)
        logits = dec.step(t, t.tolist())
        assert dec.cache is not None and dec.cache.length <= ctx
        assert max(len(r) for r in dec.rows) <= ctx
    assert dec.slides > 0 and dec.cache.max_length == ctx


def test_seeded_sampling_reproducible(model, tok) -> None:  # noqa: F811
    kw = dict(
        tokenizer=tok, temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=25, ignore_eos=True
    )
    a = generate(model, PROMPTS, seed=11, **kw)
    b = generate(model, PROMPTS, seed=11, **kw)
    c = generate(model, PROMPTS, seed=12, **kw)
    assert ids_of(a) == ids_of(b)
    assert ids_of(a) != ids_of(c)
    assert ids_of(a) == ids_of(generate(model, PROMPTS, seed=11, use_cache=False, **kw))
    for i, p in enumerate(PROMPTS):  # row i draws from its own RNG seeded with seed + i
        assert generate(model, p, seed=11 + i, **kw)[0].token_ids == a[i].token_ids


def test_top_k_1_and_tiny_top_p_equal_greedy(model, tok) -> None:  # noqa: F811
    kw = dict(tokenizer=tok, max_new_tokens=25, ignore_eos=True)
    greedy = ids_of(generate(model, PROMPTS, temperature=0, **kw))
    assert ids_of(generate(model, PROMPTS, temperature=1.3, top_k=1, seed=3, **kw)) == greedy
    assert ids_of(generate(model, PROMPTS, temperature=1.3, top_p=1e-6, seed=4, **kw)) == greedy


def test_repetition_penalty_cache_equals_recompute(model, tok) -> None:  # noqa: F811
    kw = dict(tokenizer=tok, temperature=0, max_new_tokens=30, ignore_eos=True)
    plain = ids_of(generate(model, PROMPTS, **kw))
    pen = ids_of(generate(model, PROMPTS, repetition_penalty=1.5, **kw))
    assert pen == ids_of(generate(model, PROMPTS, repetition_penalty=1.5, use_cache=False, **kw))
    assert pen != plain


def test_stop_token_ids_and_default_eos(tok) -> None:  # noqa: F811
    model = make_model("tiny")
    [ref] = generate(model, "The cat", tokenizer=tok, temperature=0, max_new_tokens=30)
    stop_id = ref.token_ids[6]
    first = ref.token_ids.index(stop_id)
    [res] = generate(
        model, "The cat", tokenizer=tok, temperature=0, max_new_tokens=30, stop_token_ids=[stop_id]
    )
    assert res.token_ids == ref.token_ids[:first] and res.finish_reason == "stop"

    eos = tok.token_to_id("<|endoftext|>")
    hook = model.lm_head.register_forward_hook(
        lambda m, i, out: out.index_fill(-1, torch.tensor([eos]), 1e4)
    )
    try:
        [res] = generate(model, "The cat", tokenizer=tok, max_new_tokens=10, seed=0)
        assert (res.token_ids, res.text, res.finish_reason) == ([], "", "stop")
        [res] = generate(model, "The cat", tokenizer=tok, max_new_tokens=5, ignore_eos=True)
        assert res.token_ids == [eos] * 5 and res.text == "" and res.finish_reason == "length"
    finally:
        hook.remove()


def test_held_back_text_is_released_at_stop_token(tok) -> None:  # noqa: F811
    model = make_model("tiny-gpt2")
    kw = dict(tokenizer=tok, temperature=0, max_new_tokens=30, ignore_eos=True)
    [ref] = generate(model, "The cat", **kw)
    k = next(j for j in range(4, 30) if ref.token_ids.index(ref.token_ids[j]) == j)
    expected = tok.decode(ref.token_ids[:k])
    assert expected and "\ufffd" not in expected[-1:]
    stop = expected[-1] + "\x00never"  # the last char waits as a possible stop-string start
    kw.update(stop_token_ids=[ref.token_ids[k]], stop=[stop])
    [res] = generate(model, "The cat", **kw)
    assert (res.text, res.finish_reason) == (expected, "stop")
    assert "".join(e.text for e in stream_generate(model, "The cat", **kw)) == expected


def test_stop_strings_cut_and_never_leak_into_stream(tok) -> None:  # noqa: F811
    model = make_model("tiny-gpt2")
    kw = dict(tokenizer=tok, temperature=0, max_new_tokens=40, ignore_eos=True)
    [ref] = generate(model, "The cat", **kw)
    text = ref.text
    stop = text[10:13]
    assert len(stop) == 3 and stop in text
    cut = text[: text.index(stop)]
    [res] = generate(model, "The cat", stop=[stop, "never-there"], **kw)
    assert res.text == cut and res.finish_reason == "stop"
    streamed = list(stream_generate(model, "The cat", stop=[stop], **kw))
    assert "".join(e.text for e in streamed) == cut
    assert streamed[-1].finish_reason == "stop"
    assert [e.finish_reason for e in streamed[:-1]] == [None] * (len(streamed) - 1)


def test_stream_equals_generate_batched(model, tok) -> None:  # noqa: F811
    kw = dict(tokenizer=tok, seed=5, temperature=0.9, top_k=40, max_new_tokens=20)
    results = generate(model, PROMPTS, **kw)
    texts = [""] * len(PROMPTS)
    reasons: list[str | None] = [None] * len(PROMPTS)
    for ev in stream_generate(model, PROMPTS, **kw):
        assert reasons[ev.index] is None  # nothing after a row's final event
        texts[ev.index] += ev.text
        reasons[ev.index] = ev.finish_reason
    assert texts == [r.text for r in results]
    assert reasons == [r.finish_reason for r in results]


def test_incremental_decoder_is_utf8_safe(tok) -> None:  # noqa: F811
    text = "Hello café naïve 東京 猫 🙂 ünïcödé the end 🙂🙂"
    ids = tok.encode(text).ids
    dec = IncrementalDecoder(tok)
    deltas = [dec.push(i) for i in ids]
    assert "".join(deltas) + dec.flush() == tok.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # some character really was split across tokens


def test_stop_matcher_holds_back_partial_stop() -> None:
    m = StopMatcher(["\nUser:"])
    assert m.feed("Hello\n") == ("Hello", False)
    assert m.feed("Us") == ("", False)
    assert m.feed("er: hi") == ("", True)
    assert m.text == "Hello"
    m = StopMatcher(["\nUser:"])
    assert m.feed("a\nU") == ("a", False)
    assert m.feed("x") == ("\nUx", False)
    assert m.feed("\nUse") == ("", False)
    assert m.finish() == "\nUse"


def test_input_validation(tok) -> None:  # noqa: F811
    model = make_model("tiny")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [[1, 2, 10_000]], max_new_tokens=2)
    with pytest.raises(ValueError, match="need a tokenizer"):
        generate(model, "text", max_new_tokens=2)
    with pytest.raises(TypeError, match="unknown sampling"):
        generate(model, [1, 2], max_new_tokenz=2)
    [r] = generate(model, "", tokenizer=tok, max_new_tokens=3, temperature=0)  # starts from EOS
    assert r.prompt_ids == [tok.token_to_id("<|endoftext|>")]
    [r] = generate(model, [1, 2], max_new_tokens=0)
    assert r.token_ids == [] and r.finish_reason == "length"


def test_batch_size_bounds_the_batch_and_keeps_every_row(
    model,
    tok,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows decode `batch_size` at a time (never more in one KV cache), with the same
    tokens, text and end reasons as one batch, for every batch size."""
    import sys

    gen_mod = sys.modules["lumenlm.infer.generate"]  # the package's `generate` is the function
    sizes: list[int] = []

    class Recording(Decoder):
        def __init__(self, model, prompts, **kw) -> None:
            sizes.append(len(prompts))
            super().__init__(model, prompts, **kw)

    monkeypatch.setattr(gen_mod, "Decoder", Recording)
    rows = [p for p in PROMPTS for _ in range(3)]  # 9 rows of 3 lengths
    kw = dict(tokenizer=tok, temperature=1.0, top_k=40, seed=5, max_new_tokens=12, stop=["e"])
    whole = generate(model, rows, **kw)
    for b in (1, 2, 4, 8, 9, 50):
        sizes.clear()
        got = generate(model, rows, batch_size=b, **kw)
        assert max(sizes) <= b and sum(sizes) == len(rows)
        assert [(r.index, r.token_ids, r.text, r.finish_reason) for r in got] == [
            (r.index, r.token_ids, r.text, r.finish_reason) for r in whole
        ]
    streamed = list(stream_generate(model, rows, batch_size=4, **kw))
    assert sorted({e.index for e in streamed}) == list(range(len(rows)))
    with pytest.raises(ValueError, match="batch_size"):
        generate(model, rows, batch_size=0, **kw)


def test_long_streams_keep_constant_memory(tok) -> None:  # noqa: F811
    """The decoder and stop matcher drop what they released: their state stays bounded
    however long the stream, and the text is the same as decoding everything at once."""
    from lumenlm.infer.detok import KEEP

    ids = tok.encode("the cat sat on the mat, café 東京 🙂 " * 1000).ids
    assert len(ids) > 2 * KEEP
    dec, match = IncrementalDecoder(tok), StopMatcher(["NEVER THERE"])
    out = []
    for i in ids:
        text, stopped = match.feed(dec.push(i))
        out.append(text)
        assert not stopped
        assert len(dec.ids) <= KEEP + 8 and len(match.text) <= KEEP + 2 * len("NEVER THERE") + 8
    out.append(match.feed(dec.flush())[0] + match.finish())
    assert "".join(out) == tok.decode(ids)
    late = StopMatcher(["END"])  # a stop string after a long run is still found
    assert late.feed("x" * (3 * KEEP))[0] == "x" * (3 * KEEP)
    assert late.feed("abEN") == ("ab", False) and late.feed("D tail") == ("", True)


def test_stop_token_ids_must_be_in_the_vocabulary() -> None:
    model = make_model("tiny")
    vocab = model.config.vocab_size
    for bad in (vocab, vocab + 10**6, 2**70):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            list(stream_generate(model, [1, 2], max_new_tokens=2, stop_token_ids=[bad]))
    with pytest.raises(ValueError, match=">= 0"):
        generate(model, [1, 2], max_new_tokens=2, stop_token_ids=[-1])
    assert generate(model, [1, 2], max_new_tokens=2, stop_token_ids=[vocab - 1])


def test_text_that_is_not_unicode_is_refused_with_where(tok) -> None:  # noqa: F811
    model = make_model("tiny")
    for prompts, where in [("\ud800", "prompt 1"), (["ok", "a\udfffb"], "prompt 2")]:
        with pytest.raises(ValueError, match=f"{where} is not valid Unicode"):
            generate(model, prompts, tokenizer=tok, max_new_tokens=1)
    with pytest.raises(ValueError, match="stop string is not valid Unicode"):
        generate(model, "hi", tokenizer=tok, max_new_tokens=1, stop=["\udc80"])
