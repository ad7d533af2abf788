"""The comparison table and the model card of a reproduction, every number read from a
file of the run (config.json, metrics.jsonl, the eval JSON, meta.json, reproduce.json)
or from the card's own numbers in `cards.CARDS`, never typed into the template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lumenlm.reproduce.cards import Card

# (key in the card / eval JSON, label, shown as a percentage)
LM_ROWS = [
    ("loss", "Cross-entropy loss (nats/token)", False),
    ("perplexity", "Perplexity", False),
    ("top1", "Top-1 accuracy", True),
    ("top5", "Top-5 accuracy", True),
    ("top10", "Top-10 accuracy", True),
]
TASK_LABELS = {"arc-easy": "ARC-Easy", "arc-challenge": "ARC-Challenge", "hellaswag": "HellaSwag"}


def _num(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    if percent:
        return f"{100 * float(value):.2f}%"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{float(value):.4f}"


def comparison_rows(card: Card, doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, the card's value, ours) for every number the card reports."""
    rows = []
    lm = doc.get("lm", {})
    for key, label, pct in LM_ROWS:
        if key in card.metrics:
            rows.append((label, _num(card.metrics[key], pct), _num(lm.get(key), pct)))
    tasks = doc.get("tasks", {})
    for key, value in card.tasks.items():
        ours = tasks.get(key, {})
        rows.append((TASK_LABELS.get(key, key) + " accuracy", _num(value, True),
                     _num(ours.get("acc"), True)))  # fmt: skip
    if "wikitext" in tasks:
        rows.append(("WikiText word perplexity (test)", "n/a",
                     _num(tasks["wikitext"].get("word_perplexity"))))  # fmt: skip
    if lm.get("bits_per_byte") is not None:
        rows.append(("Bits per byte", "n/a", _num(lm["bits_per_byte"])))
    return rows


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def format_comparison(card: Card, rows: list[tuple[str, str, str]]) -> str:
    """The table printed at the end of a reproduction."""
    return f"\n{card.title}: the card beside this reproduction\n\n" + _table(
        ("Metric", card.title, "lumenlm"), rows
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _curve_rows(records: list[dict[str, Any]], n: int = 8) -> list[tuple[Any, ...]]:
    """Evaluations (step, val loss) with the nearest training loss logged at that step."""
    train = {r["step"]: r["loss"] for r in records if "loss" in r and r.get("loss") is not None}
    evals = [r for r in records if r.get("val_loss") is not None]
    if len(evals) > n:
        evals = [evals[round(i * (len(evals) - 1) / (n - 1))] for i in range(n)]
    rows = []
    for r in evals:
        near = max((s for s in train if s <= r["step"]), default=None)
        loss = _num(train[near]) if near is not None else "n/a"
        rows.append((f"{r['step']:,}", loss, _num(r["val_loss"])))
    return rows


def model_card(
    card: Card, recipe: str, budget_minutes: float, run: Path, data_dir: Path, out: Path
) -> str:
    """The reproduction's model card, in the seed cards' sections."""
    cfg = _read_json(run / "config.json")
    m, t = cfg.get("model", {}), cfg.get("train", {})
    meta = _read_json(data_dir / "meta.json")
    doc = _read_json(out / "eval.json")
    state = _read_json(run / "checkpoints" / "last" / "trainer_state.json")
    records = _metrics(run)
    lm = doc.get("lm", {})
    dropout = max(float(m.get(k, 0.0)) for k in ("embd_dropout", "attn_dropout", "resid_dropout"))
    attn = "multi-head" if m.get("n_kv_heads") == m.get("n_heads") else "grouped-query"
    arch = [
        ("Layers", m.get("n_layers")),
        ("Attention", f"{attn}: {m.get('n_heads')} query heads, {m.get('n_kv_heads')} key/value "
                      f"heads, head size {m.get('d_head')}"),
        ("Hidden size", m.get("d_model")),
        ("Feed-forward", f"{m.get('activation')}, {m.get('d_ff')}"),
        ("Normalization", m.get("norm")),
        ("Positions", m.get("positions")),
        ("Context length", m.get("context_length")),
        ("Vocabulary", f"{m.get('vocab_size'):,}" if m.get("vocab_size") else "n/a"),
        ("Tied embeddings", "yes" if m.get("tie_embeddings") else "no"),
        ("Dropout (training)", dropout),
        ("Parameters (exact)", f"**{cfg.get('parameters', 0):,}**"),
    ]  # fmt: skip
    files = (meta.get("source") or {}).get("files", [])
    have = {f.get("name") for f in files}
    missing = [f for f in card.official_files if f not in have]
    data_lines = [f"- Dataset: {meta.get('dataset')} (the card: {card.data_note})"]
    data_lines += [
        f"- `{f.get('name')}` ({f.get('role')}, {f.get('bytes', 0):,} bytes, sha256 "
        f"`{f.get('sha256')}`)"
        for f in files
    ]
    if missing:
        data_lines.append(
            "- **Missing official files**: " + ", ".join(f"`{f}`" for f in missing)
            + ": only part of the card's data was available, so the numbers below are not "
            "a like-for-like comparison with the card"
        )  # fmt: skip
    for split, s in (meta.get("splits") or {}).items():
        data_lines.append(f"- {split}: {s.get('tokens', 0):,} tokens (`{s.get('sha256')}`)")
    data_lines.append(
        f"- Tokenizer: byte-level BPE, vocabulary {meta.get('vocab_size', 0):,}, special tokens "
        + ", ".join(f"`{k}`" for k in (meta.get("special_tokens") or {}))
    )
    eff = t.get("batch_size", 0) * t.get("grad_accum", 1) * cfg.get("world_size", 1)
    recipe_rows = [
        ("Recipe", f"`--recipe {recipe}`"),
        ("Time budget", f"{budget_minutes:g} minutes (`--max-minutes`)"),
        ("Optimizer", f"AdamW, betas ({t.get('beta1')}, {t.get('beta2')}), weight decay "
                      f"{t.get('weight_decay')}"),
        ("Peak learning rate", t.get("lr")),
        ("Schedule", f"{t.get('schedule')}, warmup {t.get('warmup_steps')} steps, floor "
                     f"ratio {t.get('min_lr_ratio')}"
                     + (f", decay fraction {t.get('decay_fraction')}"
                        if t.get("schedule") == "wsd" else "")),
        ("Batch", f"{t.get('batch_size')} x {t.get('grad_accum')} x "
                  f"{cfg.get('world_size', 1)} = {eff} sequences"),
        ("Gradient clipping", t.get("grad_clip")),
        ("Precision / device", f"{cfg.get('precision')} on {cfg.get('device')}"),
        ("Steps trained", f"{state.get('step', 0):,} of {state.get('total_steps', 0):,} planned"),
        ("Tokens seen", f"{state.get('tokens_seen', 0):,}"),
        ("Training time", f"{_num(state.get('elapsed_s'))} s"),
        ("Status", cfg.get("status")),
    ]  # fmt: skip
    protocol = (
        f"Protocol: split `{lm.get('split')}`, windows of {lm.get('window')} tokens with "
        f"stride {lm.get('stride')} ({lm.get('windows', 0):,} windows, {lm.get('tokens', 0):,} "
        "scored tokens; every token scored once, with the most context its window gives). "
        "Loss is mean cross-entropy in nats per token; perplexity its exponential; top-k "
        "is whether the target is among the k most likely tokens."
    )
    tasks_note = ""
    if doc.get("tasks"):
        tasks_note = (
            "ARC and HellaSwag: zero-shot multiple choice, each choice scored by the sum of "
            "its token log-likelihoods given the question (accuracy; acc_norm divides by "
            "the choice's length in characters, as lm-eval does), on the test files for ARC and the "
            "validation "
            "items for HellaSwag; WikiText: document-level rolling windows on the test "
            "file, words counted on the original text (lm-evaluation-harness's `wikitext`)."
        )
    task_rows = [
        (TASK_LABELS.get(k, k), _num(v.get("acc"), True), _num(v.get("acc_norm"), True),
         f"{v.get('correct', 0):,}/{v.get('total', 0):,}")
        for k, v in (doc.get("tasks") or {}).items() if "acc" in v
    ]  # fmt: skip
    hf = (out / "hf").resolve()
    sample = (out / "sample.txt").read_text().strip() if (out / "sample.txt").is_file() else ""
    parts = [
        f"# {card.title}: lumenlm reproduction (`--recipe {recipe}`)",
        "",
        "## Model Details",
        "",
        f"A decoder-only transformer with the architecture of the {card.title} card "
        f"(preset `{card.preset}`), trained from scratch by `lumenlm reproduce {card.key}`.",
        "",
        "## Model Architecture",
        "",
        _table(("Component", "Value"), arch),
        "",
        "## Data and Tokenizer",
        "",
        "\n".join(data_lines),
        "",
        "## Training Configuration",
        "",
        _table(("Setting", "Value"), recipe_rows),
        "",
        "## Evaluation Results",
        "",
        _table(("Metric", f"{card.title} card", "This model"), comparison_rows(card, doc)),
        "",
        protocol,
        "",
    ]
    if task_rows:
        parts += [_table(("Task", "Accuracy", "acc_norm", "Correct/Total"), task_rows), "",
                  tasks_note, ""]  # fmt: skip
    parts += ["## Loss Curve", ""]
    if (run / "loss_curve.png").is_file():
        parts += [f"![Training loss]({run.resolve() / 'loss_curve.png'})", ""]
    curve = _curve_rows(records)
    if curve:
        parts += [_table(("Step", "Train loss", "Validation loss"), curve), ""]
    if sample:
        parts += ["## Sample", "", "```text", sample, "```", ""]
    parts += [
        "## How to Use",
        "",
        "With lumenlm:",
        "",
        "```bash",
        f'lumenlm generate {run.resolve()} --prompt "Once upon a time" --temperature 0.8',
        "```",
        "",
        "```python",
        "from lumenlm.modelio import load",
        "from lumenlm.infer import SamplingParams, generate",
        f'model = load("{run.resolve()}")',
        'print(generate(model, "Once upon a time", SamplingParams(max_new_tokens=60), '
        "tokenizer=model.tokenizer)[0].text)",
        "```",
        "",
        "With transformers (the export beside this card):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("{hf}")',
        f'model = AutoModelForCausalLM.from_pretrained("{hf}", trust_remote_code=True)',
        "```",
        "",
        "## Limitations",
        "",
        "- A small model trained for minutes: it writes locally fluent text with little "
        "long-range coherence, and knows no facts worth relying on.",
        "- Trained and evaluated on the data listed above; where official files were missing "
        "the numbers do not compare one-to-one with the card's.",
        "- Not evaluated for bias or safety; not for production use.",
        "",
    ]
    return "\n".join(parts)
