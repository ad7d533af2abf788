"""Statistics and the Markdown section of `python -m benchmarks`.

Why apart from the runner: the numbers and their presentation are checked by fast
tests (tests/test_benchmarks_suite.py) without running a benchmark. `results` is the
JSON document the runner collects (and `--out` writes): for each preset, setting and
toolkit, the worker results of every round, or the error or the reason it was skipped.

A figure is tokens/s: a task's tokens over the median of its timed calls in one round;
a table cell is the median over rounds with the [min-max] over rounds, and a ratio is
lumenlm's median over the peer's, with the min-max of the per-round ratios (rounds
interleave the toolkits, so a round's ratio compares runs minutes apart at most).
The section sits between START and END in benchmarks/RESULTS.md and is replaced there
in place, atomically; the rest of the file is left alone.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
PEERS = ("hf", "nanogpt")
NAMES = {"lumenlm": "lumenlm", "hf": "HF", "nanogpt": "nanoGPT"}
SETTING_TITLES = {
    "default": "(a) as each user gets it by default",
    "equal": "(b) equal settings",
}


@dataclass(frozen=True)
class Summary:
    """Median and range of per-round values."""

    median: float
    lo: float
    hi: float
    n: int


def summarize(values: list[float]) -> Summary | None:
    """Median, min and max of `values`; None for no values."""
    if not values:
        return None
    return Summary(statistics.median(values), min(values), max(values), len(values))


def round_rate(task: dict[str, Any]) -> float:
    """tokens/s of one task in one round: its tokens over the median timed call."""
    return task["tokens"] / statistics.median(task["times"])


def tasks(shape: dict[str, Any]) -> list[str]:
    """The task keys a worker result holds, in table order."""
    extra = ["train_dropout"] if shape.get("dropout") else []
    return ["train", *extra, "eval", "prefill", *(f"decode_{b}" for b in shape["decode_batches"])]


def task_label(task: str, shape: dict[str, Any]) -> str:
    """A task's name with its shape, e.g. "decode b8 (16+64)"."""
    B, T = shape["batch"], shape["context"]
    if task == "train":
        return f"train step {B}x{T}"
    if task == "train_dropout":
        return f"train step {B}x{T}, dropout {shape['dropout']:g}"
    if task == "eval":
        return f"eval {B}x{T}"
    if task == "prefill":
        return f"prefill 1x{shape['prefill']}"
    b = task.removeprefix("decode_")
    return f"decode b{b} ({shape['prompt']}+{shape['new_tokens']})"


def rates(entry: dict[str, Any] | None, task: str) -> list[float]:
    """Per-round tokens/s of `task` in a toolkit entry (none if it failed or was skipped)."""
    if not entry or entry.get("error") or entry.get("skip"):
        return []
    return [round_rate(r[task]) for r in entry.get("rounds", []) if task in r]


def ratio(ours: list[float], peer: list[float]) -> tuple[float, float, float] | None:
    """(ratio of medians, min and max of the per-round ratios) of ours over the peer's."""
    if not ours or not peer:
        return None
    per_round = [a / b for a, b in zip(ours, peer)]
    return statistics.median(ours) / statistics.median(peer), min(per_round), max(per_round)


def fmt_rate(s: Summary | None) -> str:
    if s is None:
        return "-"
    if s.n == 1:
        return f"{s.median:,.0f}"
    return f"{s.median:,.0f} [{s.lo:,.0f}-{s.hi:,.0f}]"


def fmt_ratio(r: tuple[float, float, float] | None) -> str:
    if r is None:
        return "-"
    med, lo, hi = r
    return f"**{med:.2f}x**" + (f" ({lo:.2f}-{hi:.2f})" if lo != hi else "")


def _cell(entry: dict[str, Any] | None, task: str) -> str:
    if entry is None:
        return "-"
    if entry.get("skip"):
        return "-"
    if entry.get("error"):
        return "failed"
    return fmt_rate(summarize(rates(entry, task)))


def peak_summary(results: dict[str, Any]) -> dict[str, float]:
    """Best matmul FLOP/s per precision over all rounds (the roof MFU is measured against)."""
    best: dict[str, float] = {}
    for r in results.get("peak", []):
        for precision, flops in r.items():
            best[precision] = max(best.get(precision, 0.0), flops)
    return best


def _flag(flags: list[str], name: str) -> str:
    return f"{name} {'yes' if name in flags else 'no'}"


def _rounds_text(m: dict[str, Any]) -> str:
    done = m.get("rounds_done", m["repeats"])
    if done >= m["repeats"]:
        return f"- {done} interleaved rounds"
    if done < 1:
        return (f"- 1 round of {m['repeats']} planned, stopped before its end "
                "(a cell without a figure was not reached)")  # fmt: skip
    return f"- {done} interleaved rounds (of {m['repeats']} planned: the run was stopped)"


def header(results: dict[str, Any]) -> list[str]:
    m = results["meta"]
    hw = m["hardware"]
    native = _native(hw)
    flags = ", ".join(_flag(hw["flags"], f) for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    peaks = peak_summary(results)
    peak_text = (
        "; ".join(f"{p} {v / 1e9:,.1f} GFLOP/s" for p, v in sorted(peaks.items())) or "not measured"
    )
    lines = [
        f"## One command, every toolkit: `python -m benchmarks` ({m['date']}, "
        f"{device_label(results)})",
        "",
        f"`{m['command']}`",
        "",
        f"- CPU: {hw['cpu']}, {hw['usable_cores']} usable cores of {hw['cpu_count']} "
        f"({m['threads']} torch threads in every worker); {flags}; native bf16: {native}"
        + (f"; GPU: {hw['gpu']}" if hw.get("gpu") else ""),
        f"- torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}; "
        f"nanoGPT: {m['nanogpt'] or 'not given (--nanogpt PATH)'}",
        _rounds_text(m) + "; in each, every (toolkit, setting, preset) runs in "
        f"a process of its own: {m['warmup']} warm-up call(s), then the median of "
        f"{m['iters']} timed calls (training: {m['train_warmup']} warm-up step(s) after the first"
        f"{', calls of under ' + str(m['min_s']) + ' s repeated' if m['min_s'] else ''}). Cells: tokens/s, "
        "median [min-max] over rounds; ratios: lumenlm / peer, the ratio of medians "
        "(min-max of the per-round ratios); > 1 means lumenlm is faster.",
        f"- Matmul peak ({m['peak_size']}^3, best of {m['peak_repeats']} per round, best "
        f"round), measured in the same run on {device_label(results)}"
        f"{', MKL ' + m['peak_mkl'] if m.get('peak_mkl') else ''}: {peak_text}.",
        "- Tasks: training step = forward, loss, backward, clip at 1.0, AdamW step, zero_grad "
        '(B x T tokens; the "dropout" row: the same steps with every dropout rate of the '
        "model at the preset's, after one more warm-up step); eval = forward and per-token loss, no grad; prefill = one prompt "
        "into the KV cache and one new token (nanoGPT has no cache: one forward); decode = "
        "greedy, exactly N new tokens, EOS ignored, whole call (prompt included), fp32 weights.",
        "",
    ]
    if m.get("nice"):
        lines.insert(3, f"(run under `nice -n {m['nice']}` on a shared host)")
    return lines


def settings_table(results: dict[str, Any]) -> list[str]:
    lines = ["| toolkit | setting | precision | allocator | MKL | optimizer | loss | compile | decode BLAS |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for toolkit in ("lumenlm", *PEERS):
        for setting in SETTING_TITLES:
            entry = _first_entry(results, setting, toolkit)
            if entry is None:
                continue
            s, r = entry["settings"], entry["rounds"][0]
            notes = r.get("notes", {})
            precision = _per_preset(results, setting, toolkit, _precision_note)
            same = " (same runs as (a))" if entry.get("same_as") else ""
            lines.append(
                f"| {NAMES[toolkit]} | {setting}{same} | {precision} | {r.get('allocator')} | "
                f"{r.get('mkl', 'system')} | "
                f"{notes.get('optimizer', s['optimizer'])} | {notes.get('loss', '')} | "
                f"{'yes' if s['compile'] else 'no'} | {_decode_notes(results, setting, toolkit)} |"
            )
    return lines


def _decode_notes(results: dict[str, Any], setting: str, toolkit: str) -> str:
    """Each preset's decode BLAS (lumenlm's notes; peers use torch's)."""
    return _per_preset(results, setting, toolkit, lambda e: round_note(e, "decode", "torch's"))


def _precision_note(entry: dict[str, Any]) -> str:
    """The training precision an entry ran in ("bf16 (auto)" where auto chose it), and
    its evaluation's where that differs (lumenlm's default scores in fp32)."""
    precisions = sorted({r.get("precision", "?") for r in entry["rounds"]})
    text = "/".join(precisions) + (" (auto)" if entry["settings"]["precision"] == "auto" else "")
    evals = round_note(entry, "eval")
    return f"{text}; eval {evals}" if evals and evals.split()[0] not in precisions else text


def _per_preset(results: dict[str, Any], setting: str, toolkit: str, value: Any) -> str:
    """`value(entry)` of each preset's entry: one value where all agree, else each with
    its preset."""
    seen = []
    for name, preset in results["cases"].items():
        entry = preset.get(setting, {}).get(toolkit)
        if entry and entry.get("rounds") and not entry.get("error"):
            seen.append((name, value(entry)))
    if len({n for _, n in seen}) <= 1:
        return seen[0][1] if seen else ""
    return "; ".join(f"{name}: {note}" for name, note in seen)


def round_note(entry: dict[str, Any], key: str, default: str = "") -> str:
    """An entry's note `key` over its rounds: the one value, or, where the rounds differ
    (a BLAS probe that chose differently in one round), each value with its rounds."""
    values = [r.get("notes", {}).get(key, default) for r in entry["rounds"]]
    rounds: dict[str, list[str]] = {}
    for i, value in enumerate(values, 1):
        rounds.setdefault(value, []).append(str(i))
    if len(rounds) <= 1:
        return values[0] if values else default
    return "; ".join(
        f"{value} (round{'s' if len(r) > 1 else ''} {', '.join(r)})" for value, r in rounds.items()
    )


def _first_entry(results: dict[str, Any], setting: str, toolkit: str) -> dict[str, Any] | None:
    for preset in results["cases"].values():
        entry = preset.get(setting, {}).get(toolkit)
        if entry and entry.get("rounds") and not entry.get("error"):
            return entry
    return None


def speed_table(results: dict[str, Any], setting: str) -> list[str]:
    peers = [p for p in PEERS if any(
        setting in c and p in c[setting] for c in results["cases"].values())]  # fmt: skip
    head = "| preset | task | lumenlm | " + " | ".join(
        f"{NAMES[p]} | lumenlm / {NAMES[p]}" for p in peers
    )
    lines = [head + " |", "|---|---|" + "---:|" * (1 + 2 * len(peers))]
    for preset, case in results["cases"].items():
        shape = results["presets"][preset]["shape"]
        entries = case.get(setting, {})
        for task in tasks(shape):
            ours = rates(entries.get("lumenlm"), task)
            row = [preset, task_label(task, shape), _cell(entries.get("lumenlm"), task)]
            for p in peers:
                row += [
                    _cell(entries.get(p), task),
                    fmt_ratio(ratio(ours, rates(entries.get(p), task))),
                ]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def mfu_table(results: dict[str, Any]) -> list[str]:
    peaks = peak_summary(results)
    lines = [
        "| preset | setting | toolkit | precision | tokens/s | GFLOP/token | GFLOP/s | CPU MFU | "
        "device MFU | first step s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for preset, case in results["cases"].items():
        info = results["presets"][preset]
        fpt = info["flops_per_token"]
        for setting, entries in case.items():
            for toolkit, entry in entries.items():
                s = summarize(rates(entry, "train"))
                if s is None:
                    continue
                precision = entry["rounds"][0].get("precision", "?")
                peak = peaks.get(precision)
                achieved = s.median * fpt
                mfu = f"{achieved / peak:.1%}" if peak else "-"
                device_peak = results["meta"].get("device_peak", {}).get(precision)
                dmfu = f"{achieved / device_peak:.1%}" if device_peak else "-"
                first = statistics.median(r["train"]["first_step_s"] for r in entry["rounds"])
                lines.append(
                    f"| {preset} | {setting} | {NAMES[toolkit]} | {precision} | {s.median:,.0f} | "
                    f"{fpt / 1e9:.4f} | {achieved / 1e9:,.1f} | {mfu} | {dmfu} | {first:.2f} |"
                )
    return lines


def leading_equal(ours: list[list[int]], theirs: list[list[int]]) -> int:
    """How many leading new tokens agree in every row (the shorter row bounds it)."""
    n = min((min(len(a), len(b)) for a, b in zip(ours, theirs)), default=0)
    for k in range(n):
        if any(a[k] != b[k] for a, b in zip(ours, theirs)):
            return k
    return n


def check_table(results: dict[str, Any]) -> list[str]:
    """First-step training loss, eval loss and greedy ids of each toolkit, side by side."""
    lines = [
        "| preset | setting | first-step loss: lumenlm / HF / nanoGPT | eval loss: lumenlm / HF / "
        "nanoGPT | greedy ids equal to lumenlm's (HF; nanoGPT) |",
        "|---|---|---|---|---|",
    ]
    for preset, case in results["cases"].items():
        shape = results["presets"][preset]["shape"]
        for setting, entries in case.items():
            first = [_value(entries.get(t), "train", "first_loss") for t in ("lumenlm", *PEERS)]
            ev = [_value(entries.get(t), "eval", "loss") for t in ("lumenlm", *PEERS)]
            ours = entries.get("lumenlm")
            same = []
            for p in PEERS:
                parts = []
                for b in shape["decode_batches"]:
                    key = f"decode_{b}"
                    a, c = _ids(ours, key), _ids(entries.get(p), key)
                    if a is None or c is None:
                        continue
                    k = leading_equal(a, c)
                    parts.append(
                        f"b{b} "
                        + (
                            "yes"
                            if k == shape["new_tokens"]
                            else f"first {k}/{shape['new_tokens']}"
                        )
                    )
                same.append(", ".join(parts) or "-")
            lines.append(
                f"| {preset} | {setting} | {' / '.join(first)} | {' / '.join(ev)} | {'; '.join(same)} |"
            )
    return lines


def _value(entry: dict[str, Any] | None, task: str, key: str) -> str:
    if not entry or not entry.get("rounds") or entry.get("error"):
        return "-"
    return f"{entry['rounds'][0][task][key]:.6f}"


def _ids(entry: dict[str, Any] | None, key: str) -> list[list[int]] | None:
    if not entry or not entry.get("rounds") or entry.get("error"):
        return None
    return entry["rounds"][0][key]["ids"]


def notes(results: dict[str, Any]) -> list[str]:
    """Skipped and failed cells, with the reason, and per-toolkit notes."""
    out = []
    for preset, case in results["cases"].items():
        for setting, entries in case.items():
            for toolkit, entry in entries.items():
                if entry.get("skip"):
                    out.append(f"- {preset}, {NAMES[toolkit]}: - ({entry['skip']})")
                elif entry.get("error"):
                    out.append(f"- {preset}, {setting}, {NAMES[toolkit]}: failed: {entry['error']}")
                elif entry.get("rounds") and setting == "default":
                    keys = dict.fromkeys(k for r in entry["rounds"] for k in r.get("notes", {}))
                    extra = {k: round_note(entry, k) for k in keys
                             if k not in ("loss", "optimizer")}  # fmt: skip
                    if extra:
                        text = ", ".join(f"{k}: {v}" for k, v in extra.items())
                        out.append(f"- {preset}, {NAMES[toolkit]}: {text}")
    return sorted(set(out), key=out.index)


def complete_rounds(results: dict[str, Any]) -> dict[str, Any]:
    """`results` cut to its complete rounds: a stopped run (`rounds_done` < `repeats`)
    measured some toolkits once more than others in its last round, which would tilt
    the medians and pair the per-round ratios wrongly."""
    meta = results["meta"]
    done = meta.get("rounds_done", meta["repeats"])
    if done >= meta["repeats"] or done < 1:
        return results
    out = copy.deepcopy(results)
    out["peak"] = out["peak"][:done]
    for case in out["cases"].values():
        for entries in case.values():
            for entry in entries.values():
                entry["rounds"] = entry.get("rounds", [])[:done]
    return out


def _native(hw: dict[str, Any]) -> str:
    """ "none", "unknown", or the native-bf16 flags the CPU has (`devices.BF16_FLAGS`)."""
    if hw["bf16_native"] is True:
        from lumenlm.devices import BF16_FLAGS

        return "/".join(f for f in BF16_FLAGS if f in hw.get("flags", ())) or "yes"
    return {False: "none", None: "unknown"}[hw["bf16_native"]]


def device_label(results: dict[str, Any]) -> str:
    """The machine, as every table of the section names it: CPU model and native bf16."""
    hw = results["meta"]["hardware"]
    return f"{hw['cpu']}, native bf16: {_native(hw)}" + (
        f"; GPU: {hw['gpu']}" if hw.get("gpu") else ""
    )


def render(results: dict[str, Any]) -> str:
    """The whole Markdown section, markers included."""
    results = complete_rounds(results)
    on = f" ({device_label(results)})"
    lines = [START, *header(results), "### Settings", "", *settings_table(results), ""]
    for setting, title in SETTING_TITLES.items():
        if any(setting in c for c in results["cases"].values()):
            lines += [f"### {title}{on}", "", *speed_table(results, setting), ""]
    lines += [
        f"### Training FLOP/s against the matmul peak of the same run{on}",
        "",
        "FLOPs per token: 6 x matmul weights + 12 x layers x T x d_model "
        "(`lumenlm.train.metrics.flops_per_token`, T = the benchmark's context). CPU MFU "
        "divides by the matmul peak above for the same precision; device MFU by the data-sheet "
        "peak on CUDA (`guess_peak_flops`). The first step includes compilation where on.",
        "",
        *mfu_table(results),
        "",
        f"### The same computation, checked in this run{on}",
        "",
        "Same weights (HF: `lumenlm.export.hf.export_hf` of ours; nanoGPT: that export mapped "
        "into its state dict) and the same tokens: the first training step's loss and the "
        "evaluation loss agree to float rounding, and the greedy ids match token for token.",
        "",
        *check_table(results),
        "",
    ]
    extra = notes(results)
    if extra:
        lines += ["Notes:", "", *extra, ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """`text` with its START...END section replaced by `section` (appended if absent)."""
    begin, end = text.find(START), text.find(END)
    if begin != -1 and end > begin:
        return text[:begin] + section.rstrip("\n") + text[end + len(END) :]
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + section


def write_section(path: str | Path, section: str) -> Path:
    """Replace (or append) the section in the file at `path`, atomically."""
    from lumenlm.modelio import atomic_write_text

    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.exists() else "# Benchmark results\n"
    atomic_write_text(p, replace_section(text, section))
    return p
