"""The sections of a model card, each from the parsed files of a run (see `card`).

Each function takes the documents as read (config.json, trainer_state.json,
metrics.jsonl, meta.json, an eval JSON) and returns the section's Markdown lines, so
every number printed is one of those files' values, formatted, never a computed one
(the one exception: the perplexity of a best loss whose record is gone). Identifiers
that contain digits (paths, hashes, versions, dates) are in backticks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lumenlm.train.metrics import perplexity

Rows = list[tuple[Any, ...]]

TASK_LABELS = {"arc-easy": "ARC-Easy", "arc-challenge": "ARC-Challenge", "hellaswag": "HellaSwag"}
LM_ROWS = [
    ("loss", "Cross-entropy loss (nats/token)", False),
    ("perplexity", "Perplexity", False),
    ("bits_per_byte", "Bits per byte", False),
    ("top1", "Top-1 accuracy", True),
    ("top5", "Top-5 accuracy", True),
    ("top10", "Top-10 accuracy", True),
]
"""(key in an eval JSON's "lm", label, shown as a percentage)."""
MC_SCORING = (
    "ARC and HellaSwag are scored zero-shot as multiple choice: each choice is scored by the "
    "sum of its tokens' log-likelihoods after the question (acc), and by that sum divided by "
    "the choice's length in characters (acc_norm, as lm-evaluation-harness does); the "
    "highest-scoring choice is the answer."
)
WIKITEXT_SCORING = (
    "WikiText is scored as lm-evaluation-harness's `wikitext` task does: each document in "
    "rolling windows of the context, every token once; word perplexity is exp(-total "
    "log-likelihood / words), the words counted on the original document."
)


def num(value: Any, percent: bool = False) -> str:
    """A file's number as the card writes it: n/a, 12.34%, 1,234 or 4 decimals."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    if percent:
        return f"{100 * float(value):.2f}%"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    return str(value)


def setting(value: Any) -> str:
    """A configured value (a rate, a ratio, a clip) as written: 0.001, 0.9, 1e-08."""
    return f"{value:g}" if isinstance(value, float) else num(value)


def table(head: tuple[str, ...], rows: Rows) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def details(
    config: dict[str, Any], name: str, about: str | None, origin: dict[str, Any] | None
) -> list[str]:
    """Model Details: what the model is, what trained it and when; the starting weights."""
    tuned = bool(origin)
    about = about or (
        "A small GPT-style language model trained with lumenlm from the weights below."
        if tuned
        else "A small GPT-style language model trained from scratch with lumenlm."
    )
    lines = ["## Model Details", "", about, "", f"- **Name:** `{name}`"]
    kind = "decoder-only Transformer (GPT-style)"
    lines.append(
        f"- **Model type:** {kind}, "
        + ("trained from existing weights" if tuned else "trained from scratch")
    )
    if config.get("preset"):
        lines.append(f"- **Preset:** `{config['preset']}`")
    lines.append(f"- **Trained with:** lumenlm `{_version()}`")
    if config.get("created"):
        lines.append(f"- **Date:** `{config['created']}` (the run's start, config.json)")
    if config.get("status"):
        lines.append(f"- **Status:** {config['status']}")
    lines += [
        "- **License:** lumenlm is MIT-licensed; the weights also carry the terms of the data "
        "they were trained on",
        "",
        *origin_lines(origin),
    ]
    return lines


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lumenlm")
    except PackageNotFoundError:
        return "unknown"


def architecture(config: dict[str, Any]) -> list[str]:
    """Model Architecture: the table, with the exact parameter count."""
    m = config.get("model") or {}
    heads, kv = m.get("n_heads"), m.get("n_kv_heads")
    attn = "MHA" if kv == heads else ("MQA" if kv == 1 else "GQA")
    drop = max(m.get(k) or 0.0 for k in ("embd_dropout", "attn_dropout", "resid_dropout"))
    rows: Rows = [
        ("Architecture", "decoder-only Transformer (GPT-style)"),
        ("Layers", num(m.get("n_layers"))),
        ("Attention", f"{attn}, {num(heads)} query / {num(kv)} KV heads, d_head "
                      f"{num(m.get('d_head'))}"),
        ("Embedding dimension", num(m.get("d_model"))),
        ("Feed-forward", f"{m.get('activation')}, {num(m.get('d_ff'))}"),
        ("Normalization", f"{m.get('norm')} ({'pre' if m.get('pre_norm', True) else 'post'}-norm)"),
        ("Positions", m.get("positions")),
        ("Context length", f"{num(m.get('context_length'))} tokens"),
        ("Vocabulary", num(m.get("vocab_size"))),
        ("Weight tying", "enabled" if m.get("tie_embeddings") else "disabled"),
        ("Dropout (training)", setting(drop)),
        ("Total parameters", f"**{num(config.get('parameters'))}**"),
    ]  # fmt: skip
    return ["## Model Architecture", "", table(("Component", "Value"), rows), ""]


def data_and_tokenizer(
    config: dict[str, Any],
    meta: dict[str, Any],
    data: dict[str, Any],
    origin: dict[str, Any] | None,
    extra: list[str],
) -> list[str]:
    """Data and Tokenizer: the files with their sha256, what was missing, the splits."""
    src = meta.get("source") or {}
    where = config.get("data_dir") or data.get("dir")
    lines = []
    if meta.get("dataset") or src.get("name"):
        lines.append(f"- Dataset: `{meta.get('dataset') or src.get('name')}`"
                     + (f" ({src['origin']})" if src.get("origin") else ""))  # fmt: skip
    if where:
        lines.append(f"- Data directory: `{where}`")
    official = {True: ", the official file's", False: ", NOT the official file's", None: ""}
    for f in src.get("files") or []:
        lines.append(
            f"- `{f.get('name')}` ({f.get('role')}, {num(f.get('bytes'))} bytes, sha256 "
            f"`{f.get('sha256')}`{official[f.get('matches_official_sha256')]})"
        )
    if src.get("split_rule"):
        lines.append(f"- Splits: {src['split_rule']}")
    if src.get("fraction") not in (None, 1, 1.0):
        lines.append(f"- Fraction of the train documents kept: {num(src['fraction'])}")
    notes = src.get("notes") or []
    if notes:
        lines.append("- **Missing or partial official files** (from `lumenlm prepare`):")
        lines += [f"  - {note}" for note in notes]
    elif src:
        lines.append("- `lumenlm prepare` noted no missing official file")
    lines += extra
    for split, s in (meta.get("splits") or {}).items():
        docs = f", {num(s['documents'])} documents" if s.get("documents") else ""
        lines.append(f"- {split}: {num(s.get('tokens'))} tokens{docs} (sha256 `{s.get('sha256')}`)")
    if not meta.get("splits") and data.get("train_tokens") is not None:
        lines.append(f"- Train tokens: {num(data['train_tokens'])}; validation tokens: "
                     f"{num(data.get('val_tokens'))}")  # fmt: skip
    lines += _tokenizer_lines(meta, data)
    ft = (origin or {}).get("finetune") or {}
    trained = {k: data.get(k, ft.get(k)) for k in ("train_trained_tokens", "val_trained_tokens")}
    if trained["train_trained_tokens"] is not None:
        lines.append(
            f"- Trained (assistant) tokens: train {num(trained['train_trained_tokens'])}; "
            f"validation {num(trained['val_trained_tokens'])} (the loss and perplexity are "
            "over these only)"
        )
    return ["## Data and Tokenizer", "", *lines, ""]


def _tokenizer_lines(meta: dict[str, Any], data: dict[str, Any]) -> list[str]:
    tok = meta.get("tokenizer") or {}
    if not tok and not data.get("tokenizer"):
        return []
    specials = meta.get("special_tokens") or tok.get("special_tokens") or {}
    if isinstance(specials, dict):
        named = ", ".join(f"`{k}` (id {num(v)})" for k, v in specials.items())
    else:
        named = ", ".join(f"`{k}`" for k in specials)
    parts = [tok.get("type") or "tokenizer.json"]
    if tok.get("vocab_size") is not None:
        parts.append(f"vocabulary {num(tok['vocab_size'])}")
    if named:
        parts.append(f"special tokens {named}")
    if tok.get("trained") is not None:
        parts.append("trained on this data" if tok["trained"] else "reused from another dataset")
    if tok.get("sha256"):
        parts.append(f"sha256 `{tok['sha256']}`")
    return ["- Tokenizer: " + "; ".join(parts)]


def training(config: dict[str, Any], state: dict[str, Any], extra: Rows) -> list[str]:
    """Training Configuration: optimizer, schedule, batch, precision, steps and budget."""
    t = config.get("train") or {}
    ctx = (config.get("model") or {}).get("context_length")
    adam = (f"betas ({setting(t.get('beta1'))}, {setting(t.get('beta2'))}), eps "
            f"{setting(t.get('eps'))}, weight decay {setting(t.get('weight_decay'))}")  # fmt: skip
    lr = setting(t.get("lr"))
    if t.get("optimizer", "adamw") == "muon":
        optimizer = (f"Muon (Nesterov momentum {setting(t.get('muon_momentum'))}) on the block "
                     f"matrices; AdamW ({adam}) on embeddings, head, norms and biases")  # fmt: skip
        lr = f"{setting(t.get('muon_lr'))} (Muon matrices), {lr} (AdamW)"
    else:
        optimizer = f"AdamW ({adam}; decay on matrices only)"
    schedule = f"{t.get('schedule')}, warmup {num(t.get('warmup_steps'))} steps, floor " + (
        f"{setting(t.get('min_lr_ratio'))} of the peak"
    )
    if t.get("schedule") == "wsd":
        schedule += f", decay over the last {setting(t.get('decay_fraction'))} of the steps"
        if state.get("decay_steps"):
            schedule += f" (fixed at {num(state['decay_steps'])} steps by the time budget)"
    stop = "off"
    if t.get("early_stopping_patience"):
        stop = (f"patience {num(t['early_stopping_patience'])} ({t.get('early_stopping_on')}s), "
                f"threshold {setting(t.get('early_stopping_min_delta'))}")  # fmt: skip
    step = state.get("step", config.get("step"))
    total = state.get("total_steps", config.get("total_steps"))
    epoch = state.get("epoch", (state.get("sampler") or {}).get("epoch"))
    rows: Rows = [
        *extra,
        ("Optimizer", optimizer),
        ("Peak learning rate", lr),
        ("Schedule", schedule),
        ("Batch", f"{num(t.get('batch_size'))} windows of {num(ctx)} tokens x "
                  f"{num(t.get('grad_accum'))} accumulation x {num(config.get('world_size', 1))} "
                  "process(es) per step"),
        ("Gradient clipping", setting(t.get("grad_clip")) if t.get("grad_clip") else "off"),
        ("Precision / device", f"{config.get('precision', t.get('precision'))}"
                               + (f" on {config['device']}" if config.get("device") else "")),
        ("Early stopping", stop),
        ("Planned steps", num(total)),
        ("Steps trained", num(step)),
        ("Epochs completed", num(epoch)),
        ("Tokens seen", num(state.get("tokens_seen"))),
        ("Training time", f"{num(state.get('elapsed_s'))} s"),
        ("Seed", str(t.get("seed"))),
    ]  # fmt: skip
    if config.get("max_minutes") is not None:
        rows.append(("Time budget", f"{setting(config['max_minutes'])} minutes (`--max-minutes`)"))
    return ["## Training Configuration", "", table(("Setting", "Value"), rows), ""]


def validation(
    config: dict[str, Any], state: dict[str, Any], records: list[dict[str, Any]]
) -> list[str]:
    """The in-training validation: its protocol and the best (or closing) loss."""
    t = config.get("train") or {}
    ctx = num((config.get("model") or {}).get("context_length"))
    batches = t.get("eval_batches")
    which = (
        f"{num(batches)} batches of {num(t.get('batch_size'))} windows, evenly spaced over "
        "the split"
        if batches
        else "every window of the split"
    )
    protocol = (
        f"Protocol: the `val` split of the data directory in windows of {ctx} tokens "
        f"(the context) with stride {ctx}, so no token is scored twice; {which}, the same "
        f"windows at every evaluation, every {num(t.get('eval_interval'))} steps. Loss is the "
        "mean cross-entropy over the targets in nats per token; perplexity its exponential."
    )
    train = [r for r in records if r.get("loss") is not None]
    evals = [r for r in records if r.get("val_loss") is not None]
    best = config.get("best_val_loss", state.get("best_val_loss"))
    rows: Rows = []
    if train:
        rows.append(
            ("Last train loss", f"{num(train[-1]['loss'])} (step {num(train[-1]['step'])})")
        )
    if best is not None:
        at = config.get("best_step", state.get("best_step"))
        ppl = next((r.get("val_ppl") for r in evals if r.get("step") == at), None)
        rows += [("Best val loss", num(best)),
                 ("Best val perplexity", num(ppl if ppl is not None else perplexity(best))),
                 ("Best at step", num(at))]  # fmt: skip
    elif evals:  # a paused run's closing evaluation picks no best: show it, not "n/a"
        last = evals[-1]
        ppl = last.get("val_ppl")
        rows += [("Last val loss", num(last["val_loss"])),
                 ("Last val perplexity", num(ppl if ppl is not None else perplexity(last["val_loss"]))),
                 ("Evaluated at step", num(last.get("step")))]  # fmt: skip
    else:
        rows.append(("Best val loss", "n/a (no evaluation yet)"))
    return ["### Validation during training", "", protocol, "",
            table(("Metric", "Value"), rows), ""]  # fmt: skip


def evaluation(doc: dict[str, Any], path: Path | None, step: int | None = None) -> list[str]:
    """An evaluation JSON's numbers, each part with how it was computed; `step` is that of
    the checkpoint it evaluated (its trainer_state.json), when known."""
    if not doc.get("lm") and not doc.get("tasks"):
        return []
    name = f"`{path.name}`" if path is not None else "the evaluation report"
    out = [f"### Evaluation ({name}, `lumenlm eval`)", ""]
    if doc.get("model"):
        at = f" (the weights of step {num(step)})" if step is not None else ""
        out += [f"Evaluated: `{doc['model']}`{at}.", ""]
    lm = doc.get("lm") or {}
    if lm:
        out.append(
            f"Protocol: split `{lm.get('split')}`"
            + (f" of `{doc['data']}`" if doc.get("data") else "")
            + f", windows of {num(lm.get('window'))} tokens with stride {num(lm.get('stride'))}"
            f" ({num(lm.get('windows'))} windows, {num(lm.get('tokens'))} scored tokens): "
            f"{lm.get('convention')}. Bits per byte divide the loss in bits by the UTF-8 bytes "
            f"per token of the cleaned text ({num(lm.get('bytes_per_token'))})."
        )
        rows = [(label, num(lm.get(k), pct)) for k, label, pct in LM_ROWS if k in lm]
        out += ["", table(("Metric", "Value"), rows), ""]
    tasks = doc.get("tasks") or {}
    mc = [(TASK_LABELS.get(k, k), num(v.get("acc"), True), num(v.get("acc_norm"), True),
           f"{num(v.get('correct'))}/{num(v.get('total'))}", f"`{Path(str(v.get('file'))).name}`")
          for k, v in tasks.items() if "acc" in v]  # fmt: skip
    if tasks and doc.get("limit"):
        out += [f"Each task scored its first {num(doc['limit'])} items (`--limit`).", ""]
    if "hellaswag" in tasks and doc.get("hellaswag_limit"):
        out += [f"HellaSwag scored its first {num(doc['hellaswag_limit'])} validation items.", ""]
    if mc:
        out += [table(("Task", "Accuracy", "acc_norm", "Correct/Total", "File"), mc), "",
                MC_SCORING, ""]  # fmt: skip
    for key, v in tasks.items():
        if "word_perplexity" not in v:
            continue
        rows = [("Word perplexity", num(v.get("word_perplexity"))),
                ("Byte perplexity", num(v.get("byte_perplexity"))),
                ("Bits per byte", num(v.get("bits_per_byte"))),
                ("Token perplexity", num(v.get("token_perplexity"))),
                ("Documents / words", f"{num(v.get('documents'))} / {num(v.get('words'))}")]  # fmt: skip
        out += [f"{key} (split `{v.get('split')}`, file `{Path(str(v.get('file'))).name}`, window "
                f"{num(v.get('window'))}):", "", table(("Metric", "Value"), rows), "",
                WIKITEXT_SCORING, ""]  # fmt: skip
    return out


def curve_rows(records: list[dict[str, Any]], n: int = 8) -> Rows:
    """Up to `n` evaluations, evenly picked: (step, latest train loss by then, val loss)."""
    train = {r["step"]: r["loss"] for r in records if r.get("loss") is not None}
    evals = [r for r in records if r.get("val_loss") is not None]
    if len(evals) > n:
        evals = [evals[round(i * (len(evals) - 1) / (n - 1))] for i in range(n)]
    rows = []
    for r in evals:
        near = max((s for s in train if s <= r["step"]), default=None)
        rows.append((num(r["step"]), num(train[near]) if near is not None else "n/a",
                     num(r["val_loss"])))  # fmt: skip
    return rows


def loss_curve(records: list[dict[str, Any]], image: Path | None) -> list[str]:
    """Loss Curve: the plot (when there is one) and its evaluations as a table."""
    out = ["## Loss Curve", ""]
    if image is not None:
        out += [f"![Training loss]({image})", ""]
    rows = curve_rows(records)
    if rows:
        out += [table(("Step", "Train loss", "Validation loss"), rows), ""]
    return out if len(out) > 2 else []


def usage(run: Path, hf: Path, exported: bool, remote_code: bool | None) -> list[str]:
    """How to Use, with the real paths: lumenlm (Python, CLI) and transformers."""
    out = [
        "## How to Use",
        "",
        "With lumenlm, in Python:",
        "",
        "```python",
        "from lumenlm.modelio import load",
        "from lumenlm.infer import SamplingParams, generate",
        "",
        f'model = load("{run}")',
        'print(generate(model, "Once upon a time", SamplingParams(max_new_tokens=60), '
        "tokenizer=model.tokenizer)[0].text)",
        "```",
        "",
        "From the command line:",
        "",
        "```bash",
        f'lumenlm generate {run} --prompt "Once upon a time"',
        f"lumenlm chat {run}",
        "```",
        "",
    ]
    if exported:
        out += [f"With transformers, from the export at `{hf}`:", ""]
    else:
        out += ["With transformers, after exporting it:", "", "```bash",
                f"lumenlm export {run} --out {hf}", "```", ""]  # fmt: skip
    trust = ", trust_remote_code=True" if remote_code is not False else ""
    out += [
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("{hf}")',
        f'model = AutoModelForCausalLM.from_pretrained("{hf}"{trust})',
        'ids = tok("Once upon a time", return_tensors="pt")',
        "print(tok.decode(model.generate(**ids, max_new_tokens=60, do_sample=True)[0]))",
        "```",
        "",
    ]
    if remote_code is None:
        out += [
            "GPT-2 and Llama style models export as transformers' own classes, where "
            "`trust_remote_code=True` changes nothing; any other architecture ships lumenlm's "
            "model code in the export and needs it (`lumenlm export` prints which it wrote).",
            "",
        ]
    elif remote_code:
        out += ["This architecture has no stock transformers class: the export ships "
                "lumenlm's model code, hence `trust_remote_code=True`.", ""]  # fmt: skip
    return out


def limitations(config: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Limitations: the model's size, its data, and what was missing from it."""
    m = config.get("model") or {}
    train = (meta.get("splits") or {}).get("train") or {}
    out = [
        "## Limitations",
        "",
        f"- A small model ({num(config.get('parameters'))} parameters, a context of "
        f"{num(m.get('context_length'))} tokens): locally fluent at best, with little "
        "long-range coherence, and no knowledge worth relying on.",
    ]
    if train.get("tokens") is not None:
        out.append(
            f"- It saw only its training split ({num(train['tokens'])} tokens): it knows that "
            "text's domain and little else."
        )
    if (meta.get("source") or {}).get("notes"):
        out.append(
            "- Part of the official data was missing or partial (see Data and Tokenizer): its "
            "numbers do not compare one-to-one with models trained on the full data."
        )
    out += ["- Not evaluated for bias or safety; not for production or factual use.", ""]
    return out


def origin_lines(origin: dict[str, Any] | None) -> list[str]:
    """The "Starting weights" (and "Fine-tuning data") sections, or nothing."""
    if not origin:
        return []
    base = origin.get("base") or {}
    out = [
        "## Starting weights",
        "",
        f"- Model: `{base.get('path')}`",
        f"- sha256 of model.safetensors: `{base.get('sha256')}`",
    ]
    if base.get("added_tokens"):
        out.append(
            f"- Special tokens added (rows start at the mean embedding): "
            f"{', '.join(f'`{t}`' for t in base['added_tokens'])}"
        )
    out.append("")
    ft = origin.get("finetune")
    if ft:
        kinds = ", ".join(f"{k} {num(v)}" for k, v in sorted((ft.get("kinds") or {}).items()))
        out += ["## Fine-tuning data", ""]
        out += [f"- `{path}` (sha256 `{digest}`)" for path, digest in ft.get("files", {}).items()]
        out.append(
            f"- Conversations: {num(ft.get('train_conversations', 0))} train, "
            f"{num(ft.get('val_conversations', 0))} validation ({kinds}); "
            f"{num(ft.get('skipped_no_assistant', 0))} skipped without an assistant turn; "
            f"{num(ft.get('truncated', 0))} cut at a turn boundary, "
            f"{num(ft.get('dropped', 0))} dropped"
        )
        out.append(
            f"- Chat template: {ft.get('template_name')}; loss on "
            f"{'every token' if ft.get('train_on_prompt') else 'assistant tokens only'}; "
            f"packed into {num(ft.get('train_rows', 0))} train rows with block-diagonal masks"
        )
        if ft.get("base_val_loss") is not None:
            before = float(ft["base_val_loss"])
            out.append(
                f"- Assistant-token validation loss of the starting weights: {num(before)} "
                f"(perplexity {num(perplexity(before))}); after: see Evaluation Results"
            )
        out.append("")
    return out
