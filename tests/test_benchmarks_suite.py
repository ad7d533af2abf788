"""`python -m benchmarks`: its statistics, its Markdown section and the section's
replacement in RESULTS.md (fast), and a real --quick run against transformers and
nanoGPT that must show the same losses and greedy ids on every side (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.shapes import SUITE_SHAPES, suite_shape  # noqa: E402

from lumenlm.train.precision import LOSS_TOLERANCE  # noqa: E402

NANOGPT = Path(os.environ.get("NANOGPT_MODEL", "/work/peers/nanogpt/model.py"))


def _task(times: list[float], tokens: int, **extra: object) -> dict:
    return {"times": times, "tokens": tokens, **extra}


def _round(scale: float, ids: list[list[int]]) -> dict:
    """A worker result whose tasks take `scale` times the base seconds."""
    return {
        "precision": "fp32",
        "allocator": "tuned mallopt",
        "notes": {"optimizer": "AdamW(fused=True)", "loss": "chunked"},
        "train": _task(
            [0.5 * scale, 0.4 * scale, 0.6 * scale], 1000, first_loss=9.0, first_step_s=1.0
        ),
        "eval": _task([0.1 * scale], 1000, loss=8.9),
        "prefill": _task([0.01 * scale], 16),
        "decode_1": _task([0.2 * scale], 8, ids=ids[:1]),
        "decode_2": _task([0.3 * scale], 16, ids=ids),
    }


def _results() -> dict:
    shape = {"batch": 2, "context": 500, "prefill": 16, "prompt": 8, "new_tokens": 8,
             "decode_batches": [1, 2]}  # fmt: skip
    same = [[1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]]
    other = [[1, 2, 3, 9, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]]
    settings = {"precision": "auto", "allocator": "tuned", "optimizer": "lumenlm",
                "compile": False, "tf32": True}  # fmt: skip
    ours = {
        "settings": settings,
        "rounds": [_round(1.0, same), _round(1.2, same)],
        "error": None,
        "skip": None,
    }
    hf = {"settings": dict(settings, precision="fp32"), "rounds": [_round(2.0, other), _round(2.0, other)],
          "error": None, "skip": None}  # fmt: skip
    nano = {"settings": settings, "rounds": [], "error": None, "skip": "nanoGPT has only GPT-2"}
    hardware = {"cpu": "Test CPU", "flags": ["avx2", "fma"], "usable_cores": 2, "cpu_count": 2,
                "bf16_native": False, "gpu": None}  # fmt: skip
    meta = {"command": "python -m benchmarks --quick", "date": "2026-12-01 00:00 UTC",
            "hardware": hardware, "threads": 2, "torch": "2.x", "transformers": "5.x",
            "python": "3.11", "nanogpt": None, "nice": None, "repeats": 2, "iters": 3,
            "warmup": 1, "train_warmup": 1, "min_s": 0.2, "peak_size": 2048, "peak_repeats": 5}  # fmt: skip
    return {
        "meta": meta,
        "presets": {"p": {"shape": shape, "flops_per_token": 1e7, "params": 1}},
        "cases": {"p": {"default": {"lumenlm": ours, "hf": hf, "nanogpt": nano}}},
        "peak": [{"fp32": 4e10}, {"fp32": 5e10}],
    }


def test_summaries_and_ratios_are_medians_over_rounds() -> None:
    s = report.summarize([3.0, 1.0, 2.0])
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    assert report.summarize([]) is None
    # a round's rate is the tokens over the median timed call
    assert report.round_rate(_task([0.5, 0.4, 0.6], 1000)) == pytest.approx(2000.0)
    med, lo, hi = report.ratio([2.0, 4.0, 3.0], [1.0, 1.0, 2.0])
    assert med == pytest.approx(3.0) and (lo, hi) == (1.5, 4.0)
    assert report.ratio([], [1.0]) is None
    assert report.leading_equal([[1, 2, 3]], [[1, 2, 4]]) == 2
    assert report.leading_equal([[1, 2], [3, 4]], [[1, 2], [3, 4]]) == 2


def test_rendered_section_holds_hardware_command_tables_and_checks() -> None:
    text = report.render(_results())
    assert text.startswith(report.START) and text.rstrip().endswith(report.END)
    assert "python -m benchmarks --quick" in text
    assert "Test CPU" in text and "avx2 yes" in text and "amx_bf16 no" in text
    assert "native bf16: none" in text
    assert "fp32 50.0 GFLOP/s" in text  # the best round's peak
    # train: ours 1000/0.5 = 2000 and 1000/0.6 = 1667 tok/s; HF 1000/1.0 = 1000 in both rounds
    assert "1,833 [1,667-2,000]" in text
    assert "**1.83x** (1.67-2.00)" in text
    # MFU: 1833 tok/s x 1e7 FLOP/token over the 5e10 peak
    assert "36.7%" in text
    # the check table: same first loss; HF's ids differ at the 4th token of row 0
    assert "9.000000 / 9.000000 / -" in text
    assert "b1 first 3/8, b2 first 3/8" in text
    assert "nanoGPT has only GPT-2" in text


def test_section_is_replaced_in_place_and_the_rest_kept(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nbefore\n")
    first = f"{report.START}\nold numbers\n{report.END}\n"
    report.write_section(md, first)
    assert md.read_text() == f"# Results\n\nbefore\n\n{first}"
    md.write_text(md.read_text() + "\n## after\n\nkept\n")
    report.write_section(md, f"{report.START}\nnew numbers\n{report.END}\n")
    text = md.read_text()
    assert "old numbers" not in text and "new numbers" in text
    assert text.startswith("# Results\n\nbefore\n") and text.endswith("## after\n\nkept\n")
    assert text.count(report.START) == 1 and text.count(report.END) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temporary left behind


def test_shapes_fit_each_preset_context() -> None:
    from lumenlm.presets import get_preset

    for name, shape in SUITE_SHAPES.items():
        ctx = get_preset(name).model.context_length
        fitted = suite_shape(name, ctx)
        assert fitted == shape  # the table already fits
        assert shape.prompt + shape.new_tokens <= ctx and shape.context <= ctx
    small = suite_shape("tiny", 64, quick=True)
    assert small.prompt + small.new_tokens <= 64 and small.context <= 64


def test_dropout_task_runs_at_each_presets_own_rate() -> None:
    from lumenlm.presets import get_preset

    for name, shape in SUITE_SHAPES.items():
        cfg = get_preset(name).model
        if shape.dropout:
            assert shape.dropout == cfg.resid_dropout == cfg.attn_dropout == cfg.embd_dropout
            assert "train_dropout" in report.tasks(shape.__dict__)
        else:
            assert "train_dropout" not in report.tasks(shape.__dict__)


def _hf_models() -> list[torch.nn.Module]:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    llama = LlamaForCausalLM(
        LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                    num_attention_heads=2, num_key_value_heads=1, vocab_size=64)
    )  # fmt: skip
    return [gpt2, llama]


def test_dropout_setter_turns_every_toolkits_dropout_on_and_off() -> None:
    """`set_dropout(p)` reaches every rate a model uses: with p > 0 two training
    forwards differ, with 0 they are equal, and no dropout module keeps another p."""
    pytest.importorskip("transformers")
    from benchmarks import toolkits

    from lumenlm.model import GPT
    from lumenlm.presets import get_preset

    ours = [GPT(get_preset(n).model.with_dropout(0.0)) for n in ("tiny-gpt2", "tiny")]
    for model in ours + _hf_models():
        set_dropout = toolkits.dropout_setter(model)
        model.train()
        x = torch.randint(0, 64, (2, 16))

        def logits(m: torch.nn.Module = model, x: torch.Tensor = x) -> torch.Tensor:
            return m(x).logits

        set_dropout(0.0)
        assert torch.equal(logits(), logits())
        set_dropout(0.5)
        assert not torch.equal(logits(), logits())
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                assert m.p == 0.5, type(model).__name__
            rates = [getattr(m, n, None) for n in ("attn_dropout", "attention_dropout")]
            assert all(r == 0.5 for r in rates if isinstance(r, float)), type(model).__name__


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny"])
def test_quick_run_measures_every_side_and_they_agree(tmp_path: Path, preset: str) -> None:
    """A real --quick run: every task of every toolkit is timed, and the first-step loss,
    the eval loss and the greedy ids agree across lumenlm, transformers and nanoGPT (on
    the GPT-2 layout; on the Llama one nanoGPT is skipped with its reason)."""
    if not NANOGPT.is_file():
        pytest.skip(f"nanoGPT's model.py not found at {NANOGPT} (set NANOGPT_MODEL)")
    out, md = tmp_path / "r.json", tmp_path / "RESULTS.md"
    md.write_text("# Results\n")
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--presets", preset,
           "--nanogpt", str(NANOGPT), "--out", str(out), "--write-results", str(md)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    case = results["cases"][preset]
    shape = results["presets"][preset]["shape"]
    ran = ["lumenlm", "hf"] + (["nanogpt"] if preset == "tiny-gpt2" else [])
    for setting in ("default", "equal"):
        entries = case[setting]
        for toolkit in ran:
            entry = entries[toolkit]
            assert entry["error"] is None and len(entry["rounds"]) == 1, (setting, toolkit)
            r = entry["rounds"][0]
            for task in report.tasks(shape):
                assert all(t > 0 for t in r[task]["times"]), (toolkit, task)
        base = entries["lumenlm"]["rounds"][0]
        for toolkit in ran[1:]:
            r = entries[toolkit]["rounds"][0]
            # lumenlm's auto may train in bf16 where the CPU has it natively: then its
            # first loss is bf16 autocast's, within the tolerance the trainer states
            same = r["precision"] == base["precision"]
            close = pytest.approx(base["train"]["first_loss"], **(
                {"abs": 1e-4} if same else {"rel": LOSS_TOLERANCE}))  # fmt: skip
            assert r["train"]["first_loss"] == close, (setting, toolkit)
            assert r["eval"]["loss"] == pytest.approx(base["eval"]["loss"], abs=1e-4)
            for b in shape["decode_batches"]:
                assert r[f"decode_{b}"]["ids"] == base[f"decode_{b}"]["ids"], (toolkit, b)
    if preset == "tiny":
        assert "GPT-2" in case["default"]["nanogpt"]["skip"]
    text = md.read_text()
    assert text.startswith("# Results\n") and report.START in text and preset in text


def test_a_stopped_run_renders_only_its_complete_rounds() -> None:
    results = _results()
    results["meta"].update(repeats=3, rounds_done=1)
    text = report.render(results)
    # round 0 alone: ours 1000/0.5 = 2000 tok/s, HF 1000/1.0 = 1000
    assert "| 2,000 | 1,000 | **2.00x** |" in text
    assert "1 interleaved rounds (of 3 planned: the run was stopped)" in text
    assert "fp32 40.0 GFLOP/s" in text  # the second peak came from the unfinished round
    assert len(results["cases"]["p"]["default"]["lumenlm"]["rounds"]) == 2  # input untouched


def test_a_note_that_differs_between_rounds_names_its_rounds() -> None:
    results = _results()
    ours = results["cases"]["p"]["default"]["lumenlm"]
    ours["rounds"][0]["notes"]["decode"] = "torch's"
    ours["rounds"][1]["notes"]["decode"] = "numpy's (OpenBLAS), chosen by the probe"
    text = report.render(results)
    assert "torch's (round 1); numpy's (OpenBLAS), chosen by the probe (round 2)" in text
    ours["rounds"][0]["notes"]["decode"] = ours["rounds"][1]["notes"]["decode"]
    assert "(round" not in report.render(results)


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_measured_apart_from_fp32_only_where_a_probe_decides_it(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """On a CPU with native bf16, lumenlm's "auto" resolves per model in its worker (the
    trainer's probe), so the suite measures it apart from (b)'s explicit fp32 and times
    the bf16 peak too; elsewhere auto is fp32 at once and (a) and (b) are one run."""
    import argparse

    from benchmarks import __main__ as suite
    from benchmarks import toolkits

    import lumenlm.devices

    monkeypatch.setattr(lumenlm.devices, "cpu_bf16_native", lambda: native)
    cpu = torch.device("cpu")
    assert toolkits.possible_precisions("auto", cpu) == (("bf16", "fp32") if native else ("fp32",))
    assert toolkits.possible_precisions("fp32", cpu) == ("fp32",)
    args = argparse.Namespace(presets=["p"], settings=["default", "equal"], equal_precision=None,
                              compile=False, nanogpt=None)  # fmt: skip
    cases = suite.plan(args, cpu, {"p": {"nanogpt_misfit": None}})
    ours = cases["p"]["default"]["lumenlm"], cases["p"]["equal"]["lumenlm"]
    assert (ours[0] is ours[1] or ours[1].get("same_as") == "default") is not native
    hf = cases["p"]["default"]["hf"], cases["p"]["equal"]["hf"]
    assert hf[1].get("same_as") is None  # HF's defaults differ from (b) in allocator and optimizer


def test_settings_table_names_each_presets_precision_and_lumenlms_fp32_scoring() -> None:
    """Where auto chose differently per preset, the settings table says which preset got
    what, and that lumenlm's default evaluation scored in fp32 (as `lumenlm eval`)."""
    results = _results()
    ours = results["cases"]["p"]["default"]["lumenlm"]
    other = json.loads(json.dumps(ours))
    for r in ours["rounds"]:
        r["precision"] = "bf16"
        r["notes"]["eval"] = "fp32 (lumenlm eval --dtype default)"
    results["cases"]["q"] = {"default": {"lumenlm": other}}
    table = "\n".join(report.settings_table(results))
    assert "p: bf16 (auto); eval fp32 (lumenlm eval --dtype default); q: fp32 (auto)" in table
