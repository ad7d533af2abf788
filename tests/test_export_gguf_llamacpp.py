"""llama.cpp itself runs our GGUF files (slow: it builds llama.cpp from the
`llama-cpp-python` sdist once, see tests/llamacpp_helpers.py).

- `llama-tokenize` gives our token ids for texts with unicode and odd whitespace: the
  "gpt-2" pre-tokenizer name makes llama.cpp split text as our ByteLevel does;
- `llama-simple` (greedy) continues a prompt with exactly lumenlm's greedy tokens, for
  the llama and gpt2 architectures in f32.

Skipped, with the reason, where llama.cpp cannot be built (no cmake or compiler, no
registry access for the sdist).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from export_helpers import TEXTS, arch_model_dir
from llamacpp_helpers import llama_cpp_tools
from lumenlm.data.tokenizer import encode
from lumenlm.export.gguf import export_gguf
from lumenlm.modelio import load

pytestmark = pytest.mark.slow
pytest.importorskip("gguf", reason="pip install 'lumenlm[gguf]' for GGUF export")


@pytest.fixture(scope="module")
def tools():
    found, why = llama_cpp_tools()
    if found is None:
        pytest.skip(why)
    return found


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes (the inverse of bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _token_bytes(tok, ids: list[int]) -> bytes:
    dec = _byte_decoder()
    out = b""
    for i in ids:
        piece = tok.id_to_token(i)
        special = tok.get_added_tokens_decoder().get(i)
        out += piece.encode() if special is not None else bytes(dec[c] for c in piece)
    return out


def _greedy(model, ids: list[int], n: int, stop: set[int]) -> list[int]:
    x = torch.tensor([ids])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(x).logits[0, -1].argmax())
            if nxt in stop:
                break
            out.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
    return out


@pytest.mark.parametrize(
    "arch,changes",
    [
        ("llama", {}),
        ("llama", {"n_kv_heads": 1, "rope_theta": 5e5}),
        ("llama", {"attn_bias": True, "mlp_bias": True, "tie_embeddings": False}),
        ("gpt2", {}),
    ],
    ids=["llama-gqa", "llama-mqa", "llama-biases-untied", "gpt2"],
)
def test_llama_cpp_tokenizes_and_continues_like_lumenlm(tmp_path, tools, arch, changes) -> None:
    # init_std 0.2: logits far enough apart that greedy choices are not near-ties.
    cfg_changes = {"init_std": 0.2, **changes}
    if arch == "gpt2":
        cfg_changes["activation"] = "gelu_tanh"  # llama.cpp's gpt2 graph uses tanh GELU
    model = load(arch_model_dir(tmp_path, arch, **cfg_changes))
    path = export_gguf(model, tmp_path / "m.gguf", "f32")
    tok = model.tokenizer

    for i, text in enumerate(t for t in TEXTS if t):
        (tmp_path / f"p{i}.txt").write_text(text, encoding="utf-8")
        res = subprocess.run(
            [tools["llama-tokenize"], "-m", str(path), "-f", str(tmp_path / f"p{i}.txt"), "--ids"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(res.stdout.strip().splitlines()[-1]) == encode(tok, text), text

    stop = {tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|end|>")}
    for prompt in ("Once upon a time, there was", "naïve café 🙂 the cat"):
        ids = encode(tok, prompt)
        n = 24
        res = subprocess.run(
            [tools["llama-simple"], "-m", str(path), "-n", str(n), prompt],
            capture_output=True,
            check=True,
        )
        printed = res.stdout.removesuffix(b"\n")
        assert printed.startswith(_token_bytes(tok, ids))
        ours = _greedy(model, ids, n, stop)
        theirs = printed[len(_token_bytes(tok, ids)) :]
        assert len(theirs) > 0
        # llama-simple prints n_predict - 1 tokens (or stops at an end-of-generation id)
        candidates = {_token_bytes(tok, ours[:k]) for k in (n - 1, n, len(ours))}
        assert theirs in candidates, (theirs, _token_bytes(tok, ours))
