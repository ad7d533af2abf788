"""Shared fixtures for the inference tests: a small byte-level BPE and tiny models."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lumenlm.infer.batch_engine import BatchEngine
from lumenlm.infer.engine import Decoder
from lumenlm.infer.sampling import SamplingParams
from lumenlm.model import GPT
from lumenlm.modelio import save_model
from lumenlm.presets import get_preset

SPECIALS = ["<|endoftext|>", "<|pad|>"]
VOCAB = 400

_WORDS = (
    "the a cat dog sat on mat ran to house little girl boy tree sun moon happy sad "
    "friend played ball park day night said hello library book read story once upon "
    "time there was big small red blue green café naïve résumé 東京 猫 🙂 ünïcödé"
).split()


def corpus(n_sentences: int = 400, seed: int = 0) -> str:
    """A few KB of toy text with some multi-byte characters (for UTF-8 streaming)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
        lines.append(" ".join(words).capitalize() + ".")
        if rng.random() < 0.3:
            lines.append(f"User: {' '.join(words[:4])}?\nAssistant: {' '.join(words[4:])}.")
    return "\n".join(lines)


def train_tokenizer(path: Path, vocab_size: int = VOCAB) -> Path:
    """Train a byte-level BPE on `corpus()` and save it as tokenizer.json at `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus().splitlines(), trainer=trainer)
    tok.save(str(path))
    return path


def make_model(preset: str, vocab_size: int = VOCAB, seed: int = 0, **overrides: object) -> GPT:
    """A randomly initialised tiny model in eval mode (larger init so logits are peaked,
    which keeps greedy comparisons away from near-ties)."""
    cfg = dataclasses.replace(
        get_preset(preset).model, vocab_size=vocab_size, init_std=0.08, **overrides
    )
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def make_model_dir(root: Path, preset: str, tokenizer_path: Path | None, **extra: object) -> Path:
    out = root / preset
    save_model(make_model(preset), out, tokenizer_path=tokenizer_path, extra=dict(extra) or None)
    return out


# -- decode cases: the layouts the fast decode steps are checked on -------------------

FP32_RTOL = 1e-5
"""fp32 decode logits may differ from the plain path's by this, relative to the largest."""

CASES = {
    "gpt2": ("tiny-gpt2", {}),
    "lumiere": ("lumiere-1m", {"n_layers": 2, "d_model": 64, "d_ff": 128, "context_length": 48}),
    "llama-gqa": ("tiny", {}),
    "post-norm": ("tiny-gpt2", {"pre_norm": False}),
    "d_value": ("tiny", {"d_value": 8, "n_kv_heads": 1}),
}
PROMPTS = {
    "equal": [[5, 17, 42, 99, 3, 8], [7, 7, 1, 2, 3, 4]],
    "padded": [[5, 17, 42], list(range(10, 40)), [9]],
}


def model_for(case: str) -> GPT:
    preset, overrides = CASES[case]
    return make_model(preset, **overrides)


def decode_logits(model: GPT, prompts: list[list[int]], steps: int, fast: bool) -> list:
    """Greedy decode with a small window (so it slides); every step's logits."""
    dec = Decoder(model, prompts, max_new_tokens=steps, window_keep=8, fast=fast)
    logits = dec.prefill()
    out = []
    for _ in range(steps):
        out.append(logits)
        t = logits.argmax(-1)
        logits = dec.step(t, t.tolist())
    assert dec.slides > 0  # the run crossed at least one context slide
    return out


def batch_engine_tokens(model: GPT, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Each prompt's greedy tokens from the server's BatchEngine (4 slots, more prompts
    than slots, so rows join and leave mid-run), the engine closed after."""
    p = SamplingParams(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    eng = BatchEngine(model, None, slots=4)
    try:
        return [s.collect()[0] for s in eng.submit_many(prompts, p)]
    finally:
        eng.close()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny models gain nothing from 2 threads, and on a shared busy machine every small op
    can stall waiting for a descheduled worker thread (runs after conftest's setting)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="session")
def tok(tok_path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tok_path))


def serve_app(app) -> Iterator[str]:
    """Run `app` with uvicorn on a free 127.0.0.1 port in a thread; yield its base URL,
    then stop it (use as `for url in serve_app(app): ...` or from a fixture)."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
