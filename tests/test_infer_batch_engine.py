"""The continuous-batching engine without HTTP: results do not depend on the company a
sequence keeps, they equal the library's `generate`, logprobs equal the model's own, and
slots are freed at once (cancel), bounded (queue) and deadlined."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

from infer_helpers import _one_thread, make_model, tok, tok_path  # noqa: F401 (fixtures)
from lumenlm.infer import generate
from lumenlm.infer.batch_engine import BatchEngine, QueueFull
from lumenlm.infer.sampling import SamplingParams

PRESETS = ["tiny-gpt2", "tiny"]  # learned positions + LayerNorm; RoPE + RMSNorm + GQA


@pytest.fixture(scope="module", params=PRESETS)
def model(request: pytest.FixtureRequest):
    return make_model(request.param, seed=3)


@pytest.fixture()
def engine(model, tok) -> Iterator[BatchEngine]:  # noqa: F811
    eng = BatchEngine(model, tok, slots=32)
    yield eng
    eng.close()


def prompts(tok, n: int) -> list[list[int]]:  # noqa: F811
    """Prompts of 3 to ~40 tokens: with 24 new tokens some slide past the 64-token context."""
    words = "the cat sat on mat little girl 東京 🙂 played ball park".split()
    return [
        tok.encode(" ".join(words[(i + j) % len(words)] for j in range(2 + 3 * (i % 7)))).ids
        for i in range(n)
    ]


def wait_idle(engine: BatchEngine) -> None:
    deadline = time.monotonic() + 60
    while engine.stats()["active"] or engine.stats()["waiting"]:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.005)


def test_greedy_alone_equals_in_a_batch_of_32(engine: BatchEngine, tok) -> None:  # noqa: F811
    p = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True)
    rows = prompts(tok, 32)
    seqs = [engine.submit(r, p) for r in rows]  # all 32 decode together
    together = [s.collect() for s in seqs]
    alone = [engine.submit(r, p).collect() for r in rows[::4]]  # 8 of them, one at a time
    differ = [i for i, (a, b) in enumerate(zip(alone, together[::4])) if a[0] != b[0]]
    assert differ == [], f"{len(differ)} of 8 greedy sequences changed in a batch of 32"
    assert all(len(a[0]) == 20 and a[2] == "length" for a in alone)


def test_seeded_sampling_alone_equals_batched_and_generate(
    engine: BatchEngine,
    model,
    tok,  # noqa: F811
) -> None:
    p = SamplingParams(
        max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.95, seed=11, ignore_eos=True
    )
    rows = prompts(tok, 8)
    alone = [engine.submit(r, p).collect() for r in rows]
    seqs = [engine.submit(r, p) for r in rows]
    together = [s.collect() for s in seqs]
    assert [a[1] for a in alone] == [b[1] for b in together]
    for r, a in zip(rows[:2], alone):
        [ref] = generate(model, [r], p, tokenizer=tok)
        assert a[0] == ref.token_ids and a[1] == ref.text


def test_greedy_equals_generate_without_cache(engine: BatchEngine, model, tok) -> None:  # noqa: F811
    """The no-cache reference recomputes the whole window each token (sliding included)."""
    p = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True)
    rows = prompts(tok, 6)
    seqs = [engine.submit(r, p) for r in rows]
    got = [s.collect()[0] for s in seqs]
    ref = [r.token_ids for r in generate(model, rows, p, tokenizer=tok, use_cache=False)]
    assert got == ref


def test_n_sequences_use_seed_plus_i_and_stop_strings(engine: BatchEngine, model, tok) -> None:  # noqa: F811
    p = SamplingParams(max_new_tokens=20, temperature=1.0, seed=5, stop=("a", "the"))
    row = prompts(tok, 1)[0]
    seqs = engine.submit_many([row] * 3, p)
    got = [s.collect() for s in seqs]
    ref = generate(model, [row] * 3, p, tokenizer=tok)
    assert [(g[1], g[2]) for g in got] == [(r.text, r.finish_reason) for r in ref]


def test_logprobs_are_the_models_own(engine: BatchEngine, model, tok) -> None:  # noqa: F811
    p = SamplingParams(max_new_tokens=6, temperature=0.7, seed=2, ignore_eos=True)
    row = prompts(tok, 3)[2]
    seq = engine.submit(row, p, logprobs=3, prompt_logprobs=True)
    events = list(seq)
    ids = [t for ev in events for t in ev.token_ids]
    entries = [e for ev in events for e in ev.logprobs or []]
    full = torch.tensor([row + ids])
    with torch.inference_mode():
        ref = torch.log_softmax(model(full).logits[0].float(), -1)
    for j, e in enumerate(entries):  # generated token j is at position len(row) + j
        want = ref[len(row) + j - 1]
        assert e.token_id == ids[j]
        assert e.logprob == pytest.approx(float(want[ids[j]]), abs=1e-4)
        assert [t for t, _ in e.top] == want.topk(3).indices.tolist()
    assert seq.prompt_logprobs[0] is None and len(seq.prompt_logprobs) == len(row)
    for j in range(1, len(row)):
        assert seq.prompt_logprobs[j].logprob == pytest.approx(float(ref[j - 1, row[j]]), abs=1e-4)


def test_cancel_frees_the_slot_at_the_next_step(model, tok) -> None:  # noqa: F811
    eng = BatchEngine(model, tok, slots=2)
    try:
        long = SamplingParams(max_new_tokens=100_000, temperature=0, ignore_eos=True)
        seq = eng.submit(prompts(tok, 1)[0], long)
        first = next(iter(seq))
        assert first.token_ids and eng.stats()["active"] == 1
        at_cancel = eng.stats()["steps"]
        seq.cancel()
        wait_idle(eng)
        assert eng.stats()["steps"] - at_cancel <= 2  # freed at the next step, not later
        assert seq.finish_reason == "cancelled"
    finally:
        eng.close()


def test_full_queue_is_refused_and_deadlines_end_sequences(model, tok) -> None:  # noqa: F811
    eng = BatchEngine(model, tok, slots=1, max_queue=1)
    try:
        long = SamplingParams(max_new_tokens=100_000, temperature=0, ignore_eos=True)
        row = prompts(tok, 1)[0]
        a = eng.submit(row, long, timeout=0.5)
        b = eng.submit(row, long, timeout=0.5)
        with pytest.raises(QueueFull):
            eng.submit(row, long)
        assert a.collect()[2] == "timeout" and b.collect()[2] == "timeout"
        wait_idle(eng)
        assert eng.submit(row, SamplingParams(max_new_tokens=2, temperature=0)).collect()[2] in (
            "length",
            "stop",
        )
    finally:
        eng.close()
