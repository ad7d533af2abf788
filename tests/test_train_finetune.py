"""Fine-tuning with the pretraining trainer (lumenlm.train.finetune, loss, vocab, sft_data):
the loss mask, token-normalised accumulation, packing, vocabulary growth, bit-identical
resume, `train --init-from`, and the bad-input messages of `lumenlm finetune`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lumenlm.cli import main
from lumenlm.config import ModelConfig
from lumenlm.data.chat_template import TURNS, ChatTemplate
from lumenlm.data.sft import Conversation
from lumenlm.data.sft_pack import encode_conversation, fit_context, pack, pack_conversations
from lumenlm.data.tokenizer import save_tokenizer, train_tokenizer
from lumenlm.model import GPT
from lumenlm.modelio import load, save_model
from lumenlm.train import distributed as D
from lumenlm.train.loss import accumulate
from lumenlm.train.vocab import add_special_tokens, grow_state

TEXTS = [
    "User: what is two plus two\nAssistant: two plus two is four\n",
    "the quick brown fox jumps over the lazy dog while the cat sleeps",
] * 40


def _chats(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Conversations of very different lengths (1 to 3 turns, short and long replies)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        turns = 1 + int(torch.randint(3, (1,), generator=g))
        msgs = [{"role": "system", "content": "be brief"}] if i % 3 == 0 else []
        for t in range(turns):
            reps = 1 + int(torch.randint(6, (1,), generator=g))
            msgs += [
                {"role": "user", "content": f"what is {i} plus {t}"},
                {"role": "assistant", "content": " ".join(["it is four"] * reps)},
            ]
        out.append(msgs)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300, min_frequency=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A tiny base model dir with its tokenizer (no <|end|>: fine-tuning must add it)."""
    root = tmp_path_factory.mktemp("base")
    tok_path = save_tokenizer(tokenizer, root / "tok.json")
    cfg = ModelConfig(
        vocab_size=tokenizer.get_vocab_size(), d_model=32, n_layers=2, n_heads=4,
        d_ff=64, context_length=96, tie_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return save_model(GPT(cfg), root / "model", tokenizer_path=tok_path)


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("data") / "chat.jsonl"
    lines = [json.dumps({"messages": m}) for m in _chats(30)]
    lines.append(json.dumps({"instruction": "add two and two", "output": "four"}))
    f.write_text("\n".join(lines) + "\n")
    return f


def _model(rope: bool = False, vocab: int = 320) -> GPT:
    torch.manual_seed(1)
    cfg = ModelConfig(
        vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, d_ff=64, context_length=96,
        positions="rope" if rope else "learned",
    )  # fmt: skip
    return GPT(cfg)


def _rows(tokenizer, n: int = 8, T: int = 96, **kw: object):
    tok = _with_end(tokenizer)
    convs = [Conversation(m, f"x:{i}", "chat") for i, m in enumerate(_chats(n))]
    return pack_conversations(convs, TURNS, tok, T, 0, **kw), tok  # type: ignore[arg-type]


def _with_end(tokenizer):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    add_special_tokens(tok, TURNS.special_tokens)
    return tok


def _grads(model: GPT) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


# -- the loss mask -------------------------------------------------------------------


def test_labels_outside_assistant_turns_never_change_loss_or_gradients(tokenizer) -> None:
    rows, tok = _rows(tokenizer, n=6)
    x, y, doc = rows.get_batch(range(len(rows)))
    trained = y != -100
    model = _model(vocab=tok.get_vocab_size())

    def loss_and_grads(targets: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = model(x, targets, document_ids=doc).loss
        loss.backward()
        return loss.detach(), _grads(model)

    ref_loss, ref_grads = loss_and_grads(y)
    for seed in range(3):  # other labels at user/system/padding positions, then masked
        g = torch.Generator().manual_seed(seed)
        noise = torch.randint(tok.get_vocab_size(), y.shape, generator=g)
        relabelled = torch.where(trained, y, noise)
        masked = torch.where(trained, relabelled, torch.full_like(y, -100))
        loss, grads = loss_and_grads(masked)
        assert torch.equal(loss, ref_loss)
        assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
        assert not torch.equal(loss_and_grads(relabelled)[0], ref_loss)  # unmasked: differs

    # by hand: the assistant tokens are what follows <|assistant|> up to and including
    # <|end|>, found from the ids alone; mean of -log p over exactly those
    with torch.no_grad():
        logp = F.log_softmax(model(x, document_ids=doc).logits.double(), -1)
    a_id, end_id = tok.token_to_id("<|assistant|>"), tok.token_to_id("<|end|>")
    total, count = 0.0, 0
    for r in range(x.shape[0]):
        ids, inside = x[r].tolist(), False
        for t in range(len(ids) - 1):
            if doc[r, t + 1] != doc[r, t]:
                inside = False
                continue
            if ids[t] == a_id:
                inside = True
            if inside:
                total -= float(logp[r, t, ids[t + 1]])
                count += 1
                if ids[t + 1] == end_id:
                    inside = False
    assert count == int(trained.sum())
    assert float(ref_loss) == pytest.approx(total / count, rel=1e-6)


# -- accumulation --------------------------------------------------------------------


def test_accumulation_1x8_equals_8x1_by_trained_tokens(tokenizer) -> None:
    rows, tok = _rows(tokenizer, n=60, T=64)
    by_count = sorted(range(len(rows)), key=lambda i: int((rows.y[i] != -100).sum()))
    pick = [*by_count[:4], *by_count[-4:]]  # the fewest and the most trained tokens
    counts = [int((rows.y[i] != -100).sum()) for i in pick]
    assert max(counts) >= 4 * min(counts) > 0  # very different trained-token counts
    env = D.DistEnv()
    kw = {"env": env, "precision": "fp32", "strategy": "ddp", "ignore_index": -100}
    one = _model(vocab=tok.get_vocab_size())
    loss_one = accumulate(one, [rows.get_batch(pick)], **kw)
    eight = _model(vocab=tok.get_vocab_size())
    loss_eight = accumulate(eight, [rows.get_batch([i]) for i in pick], **kw)
    assert float(loss_one) == pytest.approx(float(loss_eight), rel=1e-6)
    for a, b in zip(_grads(one), _grads(eight)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the per-micro-batch mean (the bug this avoids) gives another gradient
    naive = _model(vocab=tok.get_vocab_size())
    for i in pick:
        x, y, d = rows.get_batch([i])
        (naive(x, y, document_ids=d).loss / 8).backward()
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(_grads(one), _grads(naive)))


def test_pretraining_accumulation_is_the_plain_mean_bit_for_bit() -> None:
    torch.manual_seed(0)
    x = torch.randint(320, (4, 16))
    y = torch.randint(320, (4, 16))
    env = D.DistEnv()
    m1, m2 = _model(), _model()
    loss = accumulate(
        m1, [(x[:2], y[:2]), (x[2:], y[2:])], env=env, precision="fp32", strategy="ddp",
        ignore_index=-100,
    )  # fmt: skip
    ref = torch.zeros(())
    for sl in (slice(0, 2), slice(2, 4)):
        part = m2(x[sl], y[sl], return_logits=False).loss / 2  # the trainer's loss path
        part.backward()
        ref += part.detach()
    assert torch.equal(loss, ref)
    assert all(torch.equal(a, b) for a, b in zip(_grads(m1), _grads(m2)))


# -- packing -------------------------------------------------------------------------


@pytest.mark.parametrize("rope", [False, True])
def test_packed_row_logits_equal_each_conversation_alone(tokenizer, rope: bool) -> None:
    tok = _with_end(tokenizer)
    encs = [fit_context(encode_conversation(m, TURNS, tok), 96) for m in _chats(6, seed=3)]
    encs = [e for e in encs if e is not None]
    rows = pack(encs, 96, pad_id=0)
    model = _model(rope=rope, vocab=tok.get_vocab_size()).eval()
    x, _, doc = rows.get_batch(range(len(rows)))
    assert (doc.max(dim=1).values >= 1).any()  # some row holds several conversations
    with torch.no_grad():
        packed = model(x, document_ids=doc).logits
        alone = [model(torch.from_numpy(e.ids)[None]).logits[0] for e in encs]
    seen = 0
    for r in range(len(rows)):
        for d in sorted(set(doc[r].tolist()) - {-1}):
            pos = (doc[r] == d).nonzero().flatten()
            torch.testing.assert_close(packed[r, pos], alone[seen], rtol=1e-5, atol=1e-5)
            seen += 1
    assert seen == len(encs)


# -- vocabulary growth -----------------------------------------------------------------


def test_new_rows_are_the_mean_and_old_rows_unchanged() -> None:
    model = _model(vocab=300)
    cfg = dataclass_replace(model.config, tie_embeddings=False)
    m = GPT(cfg)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    grown, new_cfg = grow_state(state, cfg, [290, 300, 301], 302, old_tokens=290)
    assert new_cfg.vocab_size == 302
    for key in ("tok_emb.weight", "lm_head.weight"):
        old, new = state[key], grown[key]
        mean = old[:290].double().mean(0).float()
        assert torch.equal(new[:290], old[:290])
        for row in (290, 300, 301):
            torch.testing.assert_close(new[row], mean)
        assert torch.equal(new[291:300], old[291:300])  # untouched padding rows
    GPT(new_cfg).load_state_dict(grown)  # shapes fit the new config


def dataclass_replace(cfg: ModelConfig, **kw: object) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)


# -- whole runs ----------------------------------------------------------------------

SETS = {"max_steps": 4, "batch_size": 2, "eval_interval": 2, "checkpoint_interval": 2,
        "log_interval": 1, "warmup_steps": 2, "seed": 3}  # fmt: skip


def _finetune(base: Path, data: Path, out: Path, stop: int | None = None, **kw: object) -> Path:
    from lumenlm.train.api import finetune

    return finetune(
        base, data, out, {**SETS, **kw}, template="turns", stop_at_step=stop,
        device="cpu", progress_bar=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def finetuned(base: Path, chat_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _finetune(base, chat_file, tmp_path_factory.mktemp("ft"))


@pytest.mark.slow
def test_finetune_resume_is_bit_identical(
    base: Path, chat_file: Path, finetuned: Path, tmp_path: Path
) -> None:
    from lumenlm.train.api import train

    paused = _finetune(base, chat_file, tmp_path / "b", stop=2)
    resumed = train(resume=paused, device="cpu", progress_bar=False)
    wa = load(finetuned / "checkpoints/last").state_dict()
    wb = load(resumed / "checkpoints/last").state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra = [json.loads(x) for x in (finetuned / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    key = ("step", "loss", "val_loss")
    assert [tuple(r.get(k) for k in key) for r in ra] == [tuple(r.get(k) for k in key) for r in rb]


def test_finetune_run_grows_vocab_and_records_base(
    base: Path, chat_file: Path, finetuned: Path
) -> None:
    full = finetuned
    ck = load(full)
    doc = ck.meta
    assert ChatTemplate.from_meta(doc) == TURNS  # chat, serve and export need no flag
    assert ck.tokenizer.token_to_id("<|end|>") is not None
    assert ck.config.vocab_size == ck.tokenizer.get_vocab_size() > load(base).config.vocab_size
    record = json.loads((full / "config.json").read_text())
    sha = __import__("hashlib").sha256((base / "model.safetensors").read_bytes()).hexdigest()
    assert record["init_from"]["path"] == str(base.resolve())
    assert record["init_from"]["sha256"] == sha
    assert record["init_from"]["added_tokens"] == ["<|end|>"]
    assert record["finetune"]["skipped_no_assistant"] == 0
    card = (full / "README.md").read_text()
    assert sha in card and str(chat_file.resolve()) in card and "assistant tokens only" in card
    evals = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in evals)


def test_init_from_checks_the_dataset_tokenizer(base: Path, tmp_path: Path, tokenizer) -> None:
    from lumenlm.errors import DataError
    from lumenlm.train.api import train
    from train_helpers import make_dataset

    other = make_dataset(tmp_path / "other", vocab=300, tokenizer=True)
    with pytest.raises(DataError) as err:
        train(data_dir=other, out_dir=tmp_path / "runs", init_from=base, device="cpu")
    msg = str(err.value)
    assert "--tokenizer" in msg and str(base / "tokenizer.json") in msg and "\n" not in msg
    # the same tokenizer: a fresh run starts from the base weights
    same = make_dataset(tmp_path / "same", vocab=300)
    (same / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    meta = json.loads((same / "meta.json").read_text())
    meta["tokenizer"] = {"file": "tokenizer.json", "sha256": load(base).meta["tokenizer_sha256"]}
    (same / "meta.json").write_text(json.dumps(meta))
    run = train(
        data_dir=same, out_dir=tmp_path / "runs", init_from=base, device="cpu",
        progress_bar=False, stop_at_step=1,
        overrides={"max_steps": 4, "batch_size": 2, "eval_interval": 100, "lr": 1e-6,
                   "warmup_steps": 0},
    )  # fmt: skip
    w0, w1 = load(base).state_dict(), load(run / "checkpoints/last").state_dict()
    fresh = GPT(load(base).config).state_dict()
    for k in w0:  # one AdamW step of lr 1e-6 away from the base, far from a fresh init
        assert (w1[k] - w0[k]).abs().max() < 1e-5
        if w0[k].std() > 0:
            assert (fresh[k] - w0[k]).abs().max() > 1e-3
    assert json.loads((run / "config.json").read_text())["init_from"]["path"] == str(base)


# -- bad input: one line each ----------------------------------------------------------


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_gives_one_line(
    base: Path, chat_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ft = ["finetune", str(base), "--out", str(tmp_path / "runs"), "--device", "cpu"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [\n')
    assert f"{bad}:2: not valid JSON" in _one_line_error(capsys, [*ft, "--data", str(bad)])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "empty file" in _one_line_error(capsys, [*ft, "--data", str(empty)])
    tpl = tmp_path / "t.json"
    tpl.write_text(json.dumps({"user": "U: {content}\n", "assistant": "A:\n"}))
    err = _one_line_error(capsys, [*ft, "--data", str(chat_file), "--template", str(tpl)])
    assert "no assistant role" in err
    no_tok = tmp_path / "no_tok"
    model = load(base)
    save_model(model, no_tok)
    err = _one_line_error(capsys, ["finetune", str(no_tok), "--data", str(chat_file)])
    assert "no tokenizer.json" in err
    assert not (tmp_path / "runs").exists()  # no run starts on invalid input
    err = _one_line_error(capsys, [*ft, "--data", str(chat_file), "--set", "model.d_model=64"])
    assert "architecture comes from" in err


def test_skipped_conversations_are_a_notice(
    base: Path, chat_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.jsonl"
    extra = json.dumps({"messages": [{"role": "user", "content": "no reply"}]})
    data.write_text(chat_file.read_text() + extra + "\n")
    argv = ["finetune", str(base), "--data", str(data), "--out", str(tmp_path / "r"),
            "--device", "cpu", "--no-progress", "--template", "turns", "--stop-at-step", "1",
            *[a for k, v in SETS.items() for a in ("--set", f"{k}={v}")]]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "1 conversation(s) without an assistant turn skipped" in err
    assert "added special token(s) <|end|>" in err


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(
    base: Path, chat_file: Path, tmp_path: Path, strategy: str
) -> None:
    """The trained-token count is all-reduced: 2 ranks x batch 2 x accumulation 2 train
    exactly what 1 process x batch 4 x accumulation 2 trains, although the ranks' rows
    hold different numbers of assistant tokens."""
    import os
    import subprocess
    import sys

    from train_helpers import only_run

    if not torch.distributed.is_available():
        pytest.skip("no torch.distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(Path(sys.executable).parent / "lumenlm")

    def argv(out: Path, batch: int) -> list[str]:
        # eval_batches 1: the same 4 validation rows on either side (a world size that
        # does not divide the rows drops the remainder, as in pretraining)
        sets = {**SETS, "batch_size": batch, "grad_accum": 2, "eval_batches": 1}
        return ["finetune", str(base), "--data", str(chat_file), "--out", str(out),
                "--template", "turns", "--device", "cpu", "--no-progress",
                "--strategy", strategy, "--val-ratio", "0.3",
                *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]  # fmt: skip

    one = subprocess.run(
        [sys.executable, script, *argv(tmp_path / "one", 4)], capture_output=True, text=True,
        env=env, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         script, *argv(tmp_path / "two", 2)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[:1500]
    ra, rb = only_run(tmp_path / "one"), only_run(tmp_path / "two")

    def losses(run: Path) -> list[float]:
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r.get("loss", r.get("val_loss")) for r in recs]

    a, b = losses(ra), losses(rb)
    assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (a, b)
    wa = load(ra / "checkpoints/last").state_dict()
    wb = load(rb / "checkpoints/last").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
