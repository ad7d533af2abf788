"""`--dtype auto` (lumenlm.infer.dtype): bf16 only where it is native, within the stated
total-variation tolerance of fp32 and (on a CPU) faster; fp32 everywhere else, untouched.

The hardware and the decode clock are faked where the policy is the subject; the
tolerance check always runs for real (bf16's numerics are bf16's where it is emulated
too, only slower)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lumenlm.infer.dtype as dt
from infer_helpers import _one_thread, make_model, make_model_dir, tok_path  # noqa: F401
from lumenlm.cli import main as cli_main
from lumenlm.modelio import load


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok_path: Path) -> Path:  # noqa: F811
    return make_model_dir(tmp_path_factory.mktemp("dtype"), "tiny", tok_path)


def native(monkeypatch: pytest.MonkeyPatch, bf16_seconds: float = 0.5) -> list[torch.dtype]:
    """Pretend the CPU has native bf16 and that a bf16 decode takes `bf16_seconds` (fp32:
    1 s); returns the dtypes the decode probe ran in."""
    ran: list[torch.dtype] = []

    def fake_decode(model, prompt, new_tokens=dt.SPEED_NEW) -> float:
        dtype = next(model.parameters()).dtype
        ran.append(dtype)
        return bf16_seconds if dtype == torch.bfloat16 else 1.0

    monkeypatch.setattr(dt, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(dt, "decode_seconds", fake_decode)
    monkeypatch.delenv(dt.ENV, raising=False)  # conftest pins auto to fp32 for other tests
    return ran


@pytest.fixture(autouse=True)
def _probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dt.ENV, raising=False)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_without_native_bf16_auto_is_the_fp32_model_itself(monkeypatch) -> None:
    model = make_model("tiny").eval()
    for flags in (False, None):  # AVX2-only, and flags unknown
        monkeypatch.setattr(dt, "cpu_bf16_native", lambda flags=flags: flags)
        out, choice = dt.choose_dtype(model)
        assert out is model and choice.name == "fp32" and not choice.probed


def test_native_faster_and_close_gives_a_bf16_copy_and_leaves_fp32_alone(monkeypatch) -> None:
    ran = native(monkeypatch, bf16_seconds=0.5)
    model = make_model("tiny").eval()
    before = state(model)
    out, choice = dt.choose_dtype(model)
    assert choice.name == "bf16" and out is not model
    assert dt.dtype_name(out) == "bf16" and dt.dtype_name(model) == "fp32"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert choice.speedup == pytest.approx(2.0)
    assert 0 <= choice.tv <= dt.TV_TOLERANCE
    # warm-up + SPEED_ROUNDS, alternating, in both dtypes
    assert ran.count(torch.bfloat16) == ran.count(torch.float32) == dt.SPEED_ROUNDS + 1
    ids = dt.probe_ids(model)
    with torch.no_grad():
        ref, got = model(ids).logits, out(ids).logits.float()
    tv = (ref.softmax(-1) - got.softmax(-1)).abs().sum(-1).max() / 2
    assert tv == pytest.approx(choice.tv, abs=1e-6)


def test_native_but_not_faster_stays_fp32(monkeypatch) -> None:
    native(monkeypatch, bf16_seconds=1.0 / (dt.SPEED_MARGIN - 0.05))
    model = make_model("tiny").eval()
    out, choice = dt.choose_dtype(model)
    assert out is model and choice.name == "fp32" and choice.probed
    assert "decoded only" in choice.reason and choice.speedup < dt.SPEED_MARGIN


def test_a_model_bf16_rounds_too_far_stays_fp32(monkeypatch) -> None:
    """A real model whose logits sit on a large common offset (a head bias of 1000: softmax
    does not care, fp32 keeps the small differences, bf16's 8-bit mantissa rounds them
    away): auto sees the moved distribution and keeps fp32, without timing it."""
    ran = native(monkeypatch)
    model = make_model("tiny", lm_head_bias=True)
    with torch.no_grad():
        model.lm_head.bias.fill_(1000.0)
    out, choice = dt.choose_dtype(model)
    assert out is model and choice.name == "fp32"
    assert choice.tv > dt.TV_TOLERANCE and "tolerance" in choice.reason
    assert ran == []  # no speed probe for a model that failed the tolerance


def test_cuda_is_not_timed(monkeypatch) -> None:
    """On a GPU the tolerance decides alone (speed=False is the CUDA default)."""
    ran = native(monkeypatch, bf16_seconds=10.0)
    out, choice = dt.choose_dtype(make_model("tiny").eval(), speed=False)
    assert choice.name == dt.dtype_name(out) == "bf16" and choice.speedup is None and ran == []


def test_probe_ids_come_from_the_tokenizer_and_fit_the_context(model_dir: Path) -> None:
    model = load(model_dir)
    ids = dt.probe_ids(model)
    n = min(dt.PROBE_TOKENS, model.config.context_length)
    assert ids.shape[0] == 1 and 2 <= ids.shape[1] <= n
    assert ids[0].tolist() == model.tokenizer.encode(dt.PROBE_TEXT).ids[: ids.shape[1]]
    model.tokenizer = None
    assert dt.probe_ids(model).shape == (1, n)


def test_generate_auto_runs_bf16_and_says_so(model_dir: Path, monkeypatch, capsys) -> None:
    native(monkeypatch)
    argv = ["generate", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "4"]
    assert cli_main([*argv, "--temperature", "0", "--json"]) == 0
    err = capsys.readouterr().err
    assert "--dtype auto chose bf16" in err and err.count("\n") == 1, err


def test_generate_auto_is_silent_fp32_without_native_bf16(
    model_dir: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(dt, "cpu_bf16_native", lambda: False)
    argv = ["generate", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "4"]
    argv += ["--temperature", "0", "--json"]
    assert cli_main(argv) == 0
    auto = capsys.readouterr()
    assert auto.err == ""
    assert cli_main([*argv, "--dtype", "fp32"]) == 0
    assert capsys.readouterr().out == auto.out  # the same tokens as explicit fp32


def test_eval_records_the_dtype_it_ran_in(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import json

    import numpy as np

    from lumenlm.data.tokens import write_token_dataset

    native(monkeypatch)
    data = tmp_path / "data"
    tokens = np.random.default_rng(0).integers(0, 300, 600)
    write_token_dataset(data, {"val": tokens}, vocab_size=400)
    out = tmp_path / "report.json"
    argv = ["eval", str(model_dir), "--data", str(data), "--dtype", "auto", "--out", str(out)]
    assert cli_main([*argv, "--allow-tokenizer-mismatch"]) == 0
    assert json.loads(out.read_text())["dtype"] == "bf16"


def test_help_states_the_tolerance_the_code_uses() -> None:
    import argparse

    from lumenlm.cli.generate import add_dtype_arg

    p = argparse.ArgumentParser()
    add_dtype_arg(p)
    text = p.format_help().replace("\n", " ")
    text = " ".join(text.split())
    assert f"probabilities stay within {dt.TV_TOLERANCE} of fp32's (total variation)" in text


def test_eval_and_inspect_default_to_fp32_even_where_bf16_is_native(
    model_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import json

    import numpy as np

    from lumenlm.data.tokens import write_token_dataset

    ran = native(monkeypatch)
    data = tmp_path / "data"
    write_token_dataset(data, {"val": np.arange(600) % 300}, vocab_size=400)
    out = tmp_path / "report.json"
    argv = ["eval", str(model_dir), "--data", str(data), "--out", str(out)]
    assert cli_main([*argv, "--allow-tokenizer-mismatch"]) == 0
    assert json.loads(out.read_text())["dtype"] == "fp32" and ran == []
    argv = ["inspect", str(model_dir), "--text", "the cat sat", "--out", str(tmp_path / "i")]
    assert cli_main([*argv, "--analyses", "logit_lens"]) == 0
    assert ran == [] and "--dtype auto" not in capsys.readouterr().err


def test_a_one_line_error_comes_before_and_without_the_probe(
    model_dir: Path, monkeypatch, capsys
) -> None:
    """A bad flag checked against the model (a stop id outside the vocabulary) is the
    only stderr line: the probe never runs for a command that fails."""
    ran = native(monkeypatch)
    argv = ["generate", str(model_dir), "--prompt", "hi", "--stop-token-id", "999999"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err and ran == [], err


def test_the_env_pin_and_attached_hooks_keep_fp32_without_a_probe(monkeypatch) -> None:
    ran = native(monkeypatch)
    model = make_model("tiny").eval()
    monkeypatch.setenv(dt.ENV, "fp32")
    out, choice = dt.choose_dtype(model)
    assert out is model and not choice.probed and dt.ENV in choice.reason
    monkeypatch.delenv(dt.ENV)
    handle = model.blocks[0].register_forward_hook(lambda *a: None)
    out, choice = dt.choose_dtype(model)
    assert out is model and "hooks" in choice.reason and ran == []
    handle.remove()
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)]):
        assert dt.choose_dtype(model)[0] is model


def test_the_copy_is_cast_on_the_way_in_and_stays_tied() -> None:
    model = make_model("tiny").eval()
    twin = dt._twin(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in twin.parameters())
    assert twin.lm_head.weight is twin.tok_emb.weight  # tied, as in the fp32 model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    shared = {p.data_ptr() for p in model.parameters()} & {p.data_ptr() for p in twin.parameters()}
    assert not shared


def test_the_decode_probe_runs_at_any_context_length() -> None:
    """`decode_times` and `decode_seconds`, for real (bf16 emulated here is only slower),
    down to a 2-position model."""
    for ctx in (2, 8, 17):
        model = make_model("tiny", context_length=ctx)
        t32, t16 = dt.decode_times(model, dt._twin(model, torch.bfloat16), dt.probe_ids(model))
        assert len(t32) == len(t16) == dt.SPEED_ROUNDS and min(t32 + t16) > 0
