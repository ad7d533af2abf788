"""LM metrics: hand-computed perplexity / top-k / bits-per-byte, window and stride rules;
the guards around them: the split's tokenizer must be the model's, a non-finite loss is an
error, and a report path or size that cannot work is refused before the evaluation."""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from lumenlm.cli import main
from lumenlm.errors import ConfigError, DataError, LumenError
from lumenlm.evaluate import evaluate_lm, evaluate_tokens, window_spans
from lumenlm.evaluate.lm import split_bytes_per_token
from lumenlm.model import GPT
from lumenlm.modelio import load, save_model
from lumenlm.presets import get_preset
from model_helpers import (
    make_tokenizer,
    model_dir,
    one_line_error,
    other_tokenizer,
    write_dataset,
)


class Bigram(nn.Module):
    """Toy LM whose next-token logits are a fixed table row per current token."""

    def __init__(self, vocab: int, context_length: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(context_length=context_length, vocab_size=vocab)
        self.tok_emb = nn.Embedding(vocab, vocab)
        nn.init.normal_(self.tok_emb.weight, std=2.0)

    def forward(self, idx: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.tok_emb(idx))


def hand_metrics(table: np.ndarray, tokens: list[int], eot: int | None = None) -> dict:
    """NLL, ranks and counts by brute force in float64 Python, pair by pair."""
    nll, content_nll, n_content, hits = [], 0.0, 0, {1: 0, 5: 0, 10: 0}
    for a, b in itertools.pairwise(tokens):
        row = [float(x) for x in table[a]]
        m = max(row)
        logz = m + math.log(sum(math.exp(x - m) for x in row))
        nll.append(logz - row[b])
        if b != eot:
            content_nll += logz - row[b]
            n_content += 1
        rank = sum(1 for x in row if x > row[b])  # tokens strictly more likely than the target
        for k in hits:
            hits[k] += rank < k
    return {"nll": nll, "content_nll": content_nll, "n_content": n_content, "hits": hits}


def test_hand_computed_perplexity_topk_bits_per_byte() -> None:
    torch.manual_seed(1)
    vocab, n = 37, 301
    model = Bigram(vocab, context_length=16).eval()
    tokens = torch.randint(0, vocab, (n,)).tolist()
    tokens[::7] = [0] * len(tokens[::7])  # token 0 plays <|endoftext|>
    bpt = 3.25
    res = evaluate_tokens(model, np.array(tokens), window=16, bytes_per_token=bpt, eot_id=0)
    ref = hand_metrics(model.tok_emb.weight.detach().double().numpy(), tokens, eot=0)
    mean = sum(ref["nll"]) / len(ref["nll"])
    assert res.tokens == n - 1
    assert res.loss == pytest.approx(mean, rel=1e-5)
    assert res.perplexity == pytest.approx(math.exp(mean), rel=1e-5)
    for k in (1, 5, 10):
        assert getattr(res, f"top{k}") == ref["hits"][k] / (n - 1)
    assert res.content_tokens == ref["n_content"]
    assert res.bytes == pytest.approx(ref["n_content"] * bpt)
    assert res.bits_per_byte == pytest.approx(
        ref["content_nll"] / (math.log(2) * ref["n_content"] * bpt), rel=1e-5
    )
    # a bigram model needs no context: every window/stride gives the same numbers
    for window, stride in [(16, 5), (4, 4), (9, 1)]:
        other = evaluate_tokens(
            model, np.array(tokens), window=window, stride=stride, bytes_per_token=bpt, eot_id=0
        )
        assert other.tokens == n - 1
        assert other.loss == pytest.approx(res.loss, rel=1e-6)
        assert other.top5 == res.top5


@pytest.mark.parametrize(
    "n,window,stride",
    [(100, 10, 10), (100, 10, 3), (11, 10, 4), (12, 10, 10), (2, 8, 8), (57, 16, 1)],
)
def test_window_spans_score_each_target_once(n: int, window: int, stride: int) -> None:
    spans = window_spans(n, window, stride)
    scored = []
    for i, (begin, end, first) in enumerate(spans):
        assert 0 < end - begin <= window and end <= n - 1
        assert first == 0 if i == 0 else first == max(end - begin - stride, 0) or end == n - 1
        targets = list(range(begin + first, end))  # target j predicts token j + 1
        # each later target sees at least window - stride tokens of context (or all before it)
        for j in targets:
            assert j - begin + 1 >= min(window - stride + 1, j + 1)
        scored += targets
    assert scored == list(range(n - 1))


def test_window_args_checked() -> None:
    with pytest.raises(ConfigError, match="skip tokens"):
        window_spans(100, 8, 9)
    model = GPT(get_preset("tiny").model).eval()
    with pytest.raises(ConfigError, match="context length"):
        evaluate_tokens(model, np.arange(100), window=65)


def test_sliding_window_on_gpt() -> None:
    model = GPT(get_preset("tiny").model).eval()
    tokens = np.random.default_rng(0).integers(0, 512, size=400)
    full = evaluate_tokens(model, tokens, batch_size=3)  # window = stride = 64
    assert (full.window, full.stride, full.tokens) == (64, 64, 399)
    # stride == window is exactly non-overlapping windows, computed here with the model's loss
    nll, count = 0.0, 0
    for b in range(0, 399, 64):
        x = torch.as_tensor(tokens[b : min(b + 64, 399)])[None]
        y = torch.as_tensor(tokens[b + 1 : min(b + 64, 399) + 1])[None]
        with torch.no_grad():
            nll += float(model(x, y).loss) * y.numel()
        count += y.numel()
    assert full.loss == pytest.approx(nll / count, rel=1e-5)
    same = evaluate_tokens(model, tokens, window=64, stride=64, batch_size=1)
    assert same.loss == pytest.approx(full.loss, rel=1e-6)
    sliding = evaluate_tokens(model, tokens, window=64, stride=16, batch_size=4)
    assert sliding.tokens == 399 and sliding.stride == 16
    assert sliding.windows == len(window_spans(400, 64, 16))


def test_evaluate_lm_on_prepared_split_and_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tokens = np.random.default_rng(1).integers(1, 512, size=300)
    tokens[[50, 170, 299]] = 0
    data = write_dataset(tmp_path / "data", tokens, n_bytes=1200)
    meta = json.loads((data / "meta.json").read_text())
    assert split_bytes_per_token(meta, "val") == pytest.approx(1200 / 297)
    model = GPT(get_preset("tiny").model).eval()
    res = evaluate_lm(model, data, "val", stride=32)
    # the first token is never a target: 296 of the 297 content tokens are scored
    assert res.tokens == 299 and res.content_tokens == 296
    assert res.bytes == pytest.approx(1200 * 296 / 297)
    assert res.bits_per_byte is not None and math.isfinite(res.bits_per_byte)

    save_model(model, tmp_path / "model")
    out = tmp_path / "report.json"
    rc = main(
        [
            "eval",
            str(tmp_path / "model"),
            "--data",
            str(data),
            "--stride",
            "32",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "window 64" in text and "stride 32" in text and "299 tokens" in text
    doc = json.loads(out.read_text())["lm"]
    for key in (
        "loss",
        "perplexity",
        "bits_per_byte",
        "top1",
        "top5",
        "top10",
        "window",
        "stride",
        "tokens",
    ):
        assert key in doc
    assert doc["loss"] == pytest.approx(res.loss, rel=1e-6)
    assert doc["perplexity"] == pytest.approx(math.exp(res.loss), rel=1e-6)

    # --dtype bf16: weights and activations in bfloat16, scores accumulated in fp32/fp64
    out16 = tmp_path / "report16.json"
    args = ["eval", str(tmp_path / "model"), "--data", str(data), "--stride", "32"]
    assert main([*args, "--out", str(out16), "--device", "cpu", "--dtype", "bf16"]) == 0
    doc16 = json.loads(out16.read_text())
    assert doc16["dtype"] == "bf16" and json.loads(out.read_text())["dtype"] == "fp32"
    assert doc16["lm"]["tokens"] == doc["tokens"]
    assert doc16["lm"]["loss"] == pytest.approx(res.loss, abs=0.02)  # bf16 rounding only
    assert doc16["lm"]["loss"] != res.loss


def test_cli_needs_something_to_do(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    assert main(["eval", str(tmp_path / "m")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


# -- tokenizer fingerprint: the split must be encoded with the model's tokenizer ------------


@pytest.fixture
def tok(tmp_path: Path) -> Path:
    return make_tokenizer(tmp_path / "tok" / "tokenizer.json")


def _eval(model: Path, data: Path, *extra: str) -> int:
    return main(["eval", str(model), "--data", str(data), "--device", "cpu", *extra])


TOKENS = np.random.default_rng(0).integers(1, 300, size=150)


def test_split_of_another_tokenizer_is_refused(tmp_path: Path, tok: Path, capsys) -> None:
    mdir = model_dir(tmp_path / "m", tokenizer=tok)
    same = write_dataset(tmp_path / "same", TOKENS, vocab=300, tokenizer=tok)
    assert _eval(mdir, same) == 0
    capsys.readouterr()
    # same vocabulary size, other ids: the numbers would look fine and mean nothing
    other = other_tokenizer(tok, tmp_path / "other.json")
    wrong = write_dataset(tmp_path / "wrong", TOKENS, vocab=300, tokenizer=other)
    assert _eval(mdir, wrong) == 2
    one_line_error(capsys.readouterr().err, "another tokenizer", "--allow-tokenizer-mismatch")
    assert _eval(mdir, wrong, "--allow-tokenizer-mismatch") == 0
    with pytest.raises(DataError, match="another tokenizer"):
        evaluate_lm(load(mdir), wrong)
    assert evaluate_lm(load(mdir), wrong, allow_tokenizer_mismatch=True).tokens == 149


def test_old_dirs_compare_tokenizer_files_or_skip(tmp_path: Path, tok: Path, capsys) -> None:
    mdir = model_dir(tmp_path / "m", tokenizer=tok)
    doc = json.loads((mdir / "config.json").read_text())
    del doc["tokenizer_sha256"]  # a model dir from before the fingerprint
    (mdir / "config.json").write_text(json.dumps(doc))
    other = other_tokenizer(tok, tmp_path / "other.json")
    # a dataset without meta.json's record: its tokenizer.json's digest is compared
    wrong = write_dataset(
        tmp_path / "w", TOKENS, vocab=300, tokenizer=other, record_tokenizer=False
    )
    assert _eval(mdir, wrong) == 2
    one_line_error(capsys.readouterr().err, "another tokenizer")
    # the same tokenizer written with other formatting is the same tokenizer
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(tok.read_text()), indent=2))
    assert pretty.read_bytes() != tok.read_bytes()
    same = write_dataset(tmp_path / "s", TOKENS, vocab=300, tokenizer=pretty)
    assert _eval(mdir, same) == 0
    # nothing to compare with on one side: no error
    (mdir / "tokenizer.json").unlink()
    assert _eval(mdir, wrong) == 0
    bare = write_dataset(tmp_path / "bare", TOKENS, vocab=300)
    assert _eval(model_dir(tmp_path / "m2", tokenizer=tok), bare) == 0


# -- a non-finite loss is an error ----------------------------------------------------------


def test_non_finite_loss_is_an_error(tmp_path: Path, capsys) -> None:
    model = GPT(get_preset("tiny").model).eval()
    with torch.no_grad():
        model.tok_emb.weight[7] = float("nan")  # tied: every logit row has a nan
    tokens = np.full(300, 5)
    # it stops at the first batch, not after the whole split
    with pytest.raises(LumenError, match=r"loss is nan on tokens 0\.\.64 of val"):
        evaluate_tokens(model, tokens, window=64, batch_size=1, split="val")
    save_model(model, tmp_path / "m")
    data = write_dataset(tmp_path / "data", tokens)
    assert _eval(tmp_path / "m", data, "--out", str(tmp_path / "r.json")) == 2
    one_line_error(capsys.readouterr().err, "loss is nan", "non-finite")
    assert not (tmp_path / "r.json").exists()


# -- what cannot work is refused before the evaluation ----------------------------------------


def _no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("lumenlm.modelio.load", boom)


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for cand in (ro, Path("/proc")):
        try:
            tempfile.NamedTemporaryFile(dir=cand).close()
        except OSError:
            return cand
    pytest.skip("no unwritable folder here (root, and /proc is writable?)")


@pytest.mark.parametrize("flag", ["--out", "--per-example"])
@pytest.mark.parametrize("where", ["directory", "under_a_file", "read_only", "read_only_deep"])
def test_unwritable_report_refused_first(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, flag: str, where: str
) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "m")
    (tmp_path / "afile").write_text("x")
    if where == "directory":
        target = tmp_path
    elif where == "under_a_file":
        target = tmp_path / "afile" / "r.json"
    else:  # a report in a read-only folder, or in a folder still to create under one
        ro = _read_only_dir(tmp_path)
        target = ro / "r.json" if where == "read_only" else ro / "new" / "r.json"
    _no_load(monkeypatch)
    argv = ["eval", str(tmp_path / "m"), "--data", str(tmp_path), "--tasks", "arc-easy"]
    assert main([*argv, flag, str(target)]) == 2
    err = one_line_error(capsys.readouterr().err, f"{flag} {target}")
    assert ("is a directory" in err) if where == "directory" else ("choose" in err)


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--batch-size", "0"),
        ("--max-tokens", "-5"),
        ("--window", "0"),
        ("--stride", "-1"),
        ("--limit", "0"),
    ],
)
def test_zero_or_negative_sizes_refused_first(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, flag: str, value: str
) -> None:
    _no_load(monkeypatch)
    assert main(["eval", str(tmp_path), "--data", str(tmp_path), flag, value]) == 2
    one_line_error(capsys.readouterr().err, f"{flag} must be >= 1, got {value}")


def test_library_refuses_zero_or_negative_sizes(tmp_path: Path) -> None:
    model = GPT(get_preset("tiny").model).eval()
    data = write_dataset(tmp_path / "data", np.arange(1, 100))
    with pytest.raises(ConfigError, match="max_tokens must be >= 1, got -5"):
        evaluate_lm(model, data, max_tokens=-5)  # a slice [:-5] would drop the tail
    with pytest.raises(ConfigError, match="batch size must be >= 1, got 0"):
        evaluate_tokens(model, np.arange(1, 100), batch_size=0)


def test_sigterm_during_eval_leaves_no_half_written_report(tmp_path: Path) -> None:
    """SIGTERM in the middle of `lumenlm eval --out`: a non-zero exit, and the report is
    either absent or whole (it is written atomically once the scores are in)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    tok = make_tokenizer(tmp_path / "tok.json")
    model = model_dir(tmp_path / "model", tokenizer=tok)
    rng = np.random.default_rng(0)
    data = write_dataset(tmp_path / "data", rng.integers(1, 200, 300_000), vocab=300, tokenizer=tok)
    out = tmp_path / "report.json"
    code = "import sys; from lumenlm.cli import main; sys.exit(main())"
    argv = ["eval", str(model), "--data", str(data), "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv, "--batch-size", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(6.0)  # imports, load, and well into the scoring of 300k tokens
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("eval finished before the signal (a very fast machine)")
    assert proc.returncode == -signal.SIGTERM or proc.returncode == 128 + signal.SIGTERM, err
    assert not out.exists() or json.loads(out.read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.json")]


def test_bits_per_byte_without_byte_counts_decodes_the_split(tmp_path: Path) -> None:
    """An older meta.json (no bytes, no bytes_per_token) still gets bits per byte: the
    split's bytes are counted by decoding it with the model's tokenizer."""
    from tokenizers import Tokenizer

    tok_path = make_tokenizer(tmp_path / "tokenizer.json")
    tok = Tokenizer.from_file(str(tok_path))
    eot = tok.token_to_id("<|endoftext|>")
    text = "the cat sat on the mat. a dog ran to the house. " * 12
    ids = tok.encode(text).ids
    tokens = np.array([*ids[:200], eot, *ids[:150]])
    content = [t for t in tokens.tolist() if t != eot]
    n_bytes = len(tok.decode(content).encode("utf-8"))
    model = load(model_dir(tmp_path / "model", tok_path))
    counted = write_dataset(
        tmp_path / "a", tokens, eot=eot, n_bytes=n_bytes, vocab=300, tokenizer=tok_path
    )
    older = write_dataset(tmp_path / "b", tokens, eot=eot, vocab=300, tokenizer=tok_path)
    meta = json.loads((older / "meta.json").read_text())
    del meta["bytes_per_token"], meta["splits"]["val"]["bytes"]
    (older / "meta.json").write_text(json.dumps(meta))
    assert split_bytes_per_token(meta, "val") is None
    res, ref = evaluate_lm(model, older, "val"), evaluate_lm(model, counted, "val")
    assert res.bytes_per_token == pytest.approx(n_bytes / len(content), rel=1e-12)
    assert res.bits_per_byte == pytest.approx(ref.bits_per_byte, rel=1e-9)
    assert 0 < res.bits_per_byte < 20
