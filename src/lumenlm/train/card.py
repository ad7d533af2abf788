"""Model card (README.md) for a run or checkpoint, in the style of the seed cards."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from lumenlm.config import ModelConfig, TrainConfig
from lumenlm.train.checkpoint import Progress
from lumenlm.train.metrics import perplexity
from lumenlm.train.runs import read_metrics


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.3g}"
    return str(value)


def render_card(
    *,
    name: str,
    model: ModelConfig,
    train: TrainConfig,
    n_params: int,
    data: dict[str, Any],
    progress: dict[str, Any],
    curve: str | None = "loss_curve.png",
    origin: dict[str, Any] | None = None,
    path: str | None = None,
) -> str:
    """Markdown card: architecture table, exact parameter count, data, recipe, metrics.

    `path` is where the model loads from, for "How to Use" (default: `name`).

    `origin` (fine-tuning, `--init-from`): the starting weights ("base": path and
    sha256), and for fine-tuning its data ("finetune": files, template, counts)."""
    m, t = model, train
    name_path = path or name
    attn = "MHA" if m.n_kv_heads == m.n_heads else ("MQA" if m.n_kv_heads == 1 else "GQA")
    dropout = max(m.embd_dropout, m.attn_dropout, m.resid_dropout)
    arch = [
        ("Architecture", "decoder-only Transformer (GPT-style)"),
        ("Layers", m.n_layers),
        ("Attention", f"{attn}, {m.n_heads} query / {m.n_kv_heads} KV heads, d_head {m.d_head}"),
        ("Embedding dimension", m.d_model),
        ("Feed-forward", f"{m.activation}, {m.d_ff}"),
        ("Normalization", f"{m.norm} ({'pre' if m.pre_norm else 'post'}-norm)"),
        ("Positions", m.positions),
        ("Context length", f"{m.context_length} tokens"),
        ("Vocabulary", m.vocab_size),
        ("Weight tying", "enabled" if m.tie_embeddings else "disabled"),
        ("Dropout", dropout),
        ("Total parameters", f"**{n_params:,}**"),
    ]
    eff = t.batch_size * t.grad_accum * int(progress.get("world_size", 1))
    recipe = [
        ("Optimizer", f"AdamW (betas {t.beta1}, {t.beta2}, eps {t.eps}), decay on matrices only"),
        (
            "Learning rate",
            f"{t.lr:g}, warmup {t.warmup_steps} steps, {t.schedule} to {t.lr * t.min_lr_ratio:g}",
        ),
        ("Weight decay", t.weight_decay),
        (
            "Batch",
            f"{t.batch_size} x {t.grad_accum} accumulation x {progress.get('world_size', 1)} "
            f"process(es) = {eff} windows",
        ),
        ("Gradient clipping", t.grad_clip or "off"),
        ("Precision", progress.get("precision", t.precision)),
        (
            "Early stopping",
            f"patience {t.early_stopping_patience} ({t.early_stopping_on}s), "
            f"threshold {t.early_stopping_min_delta:g}"
            if t.early_stopping_patience
            else "off",
        ),
        ("Planned steps", progress.get("total_steps")),
        ("Seed", t.seed),
    ]
    results = [
        ("Steps trained", progress.get("step")),
        ("Epochs completed", progress.get("epoch")),
        ("Tokens seen", f"{int(progress.get('tokens_seen', 0)):,}"),
        ("Last train loss", _fmt(progress.get("loss"))),
        ("Best val loss", _fmt(progress.get("best_val_loss"))),
        ("Best val perplexity", _fmt(progress.get("best_val_ppl"))),
        ("Best at step", progress.get("best_step")),
    ]
    if progress.get("best_val_loss") is None and progress.get("last_val_loss") is not None:
        # a paused run's closing evaluation picks no best: show it rather than "n/a"
        results[-3:] = [
            ("Last val loss", _fmt(progress["last_val_loss"])),
            ("Last val perplexity", _fmt(perplexity(progress["last_val_loss"]))),
            ("Evaluated at step", progress.get("last_val_step")),
        ]

    def table(rows: list[tuple[str, Any]], head: tuple[str, str]) -> str:
        lines = [f"| {head[0]} | {head[1]} |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines)

    data_lines = [f"- Data directory: `{data.get('dir')}`"]
    if data.get("train_tokens") is not None:
        data_lines.append(
            f"- Train tokens: {data['train_tokens']:,}; validation tokens: "
            f"{data.get('val_tokens', 0):,}"
        )
    if data.get("tokenizer"):
        data_lines.append(f"- Tokenizer: {data['tokenizer']}")
    for key, label in (("train_trained_tokens", "Trained (assistant) tokens: train"),):
        if data.get(key) is not None:
            data_lines.append(
                f"- {label} {data[key]:,}; validation {data.get('val_trained_tokens', 0):,} "
                "(the loss and perplexity are over these only)"
            )
    start = _origin_lines(origin)
    parts = [
        f"# {name}",
        "",
        "*A small GPT-style language model trained from scratch with lumenlm.*"
        if not start
        else "*A small GPT-style language model trained with lumenlm from the weights below.*",
        "",
        *start,
        "## Model Architecture",
        "",
        table(arch, ("Component", "Value")),
        "",
        "## Dataset",
        "",
        "\n".join(data_lines),
        "",
        "## Training Configuration",
        "",
        table(recipe, ("Setting", "Value")),
        "",
        "## Results",
        "",
        table(results, ("Metric", "Value")),
        "",
    ]
    if curve:
        parts += ["![Training loss](" + curve + ")", ""]
    parts += [
        "## How to Use",
        "",
        "```python",
        "from lumenlm.modelio import load",
        "from lumenlm.infer import SamplingParams, generate",
        f'model = load("{name_path}")',
        'print(generate(model, "Once upon a time", SamplingParams(max_new_tokens=60), '
        "tokenizer=model.tokenizer)[0].text)",
        "```",
        "",
        "```bash",
        f'lumenlm generate {name_path} --prompt "Once upon a time"',
        "```",
        "",
    ]
    return "\n".join(parts)


def _origin_lines(origin: dict[str, Any] | None) -> list[str]:
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
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted((ft.get("kinds") or {}).items()))
        out += ["## Fine-tuning data", ""]
        out += [f"- `{path}` (sha256 `{digest}`)" for path, digest in ft.get("files", {}).items()]
        out.append(
            f"- Conversations: {ft.get('train_conversations', 0):,} train, "
            f"{ft.get('val_conversations', 0):,} validation ({kinds}); "
            f"{ft.get('skipped_no_assistant', 0)} skipped without an assistant turn; "
            f"{ft.get('truncated', 0)} cut at a turn boundary, {ft.get('dropped', 0)} dropped"
        )
        out.append(
            f"- Chat template: {ft.get('template_name')}; loss on "
            f"{'every token' if ft.get('train_on_prompt') else 'assistant tokens only'}; "
            f"packed into {ft.get('train_rows', 0):,} train rows with block-diagonal masks"
        )
        if ft.get("base_val_loss") is not None:
            before = float(ft["base_val_loss"])
            out.append(
                f"- Assistant-token validation loss of the starting weights: {before:.4f} "
                f"(perplexity {perplexity(before):.2f}); after: see Results"
            )
        out.append("")
    return out


def run_card(
    run_dir: Path,
    *,
    model: ModelConfig,
    train: TrainConfig,
    n_params: int,
    progress: Progress,
    epoch: int,
    precision: str,
    world_size: int,
    data: dict[str, Any],
    curve: str | None = "loss_curve.png",
    origin: dict[str, Any] | None = None,
) -> str:
    """The card of a run in training: `render_card` with its progress and last loss."""
    records = read_metrics(run_dir)
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    evals = [r for r in records if r.get("val_loss") is not None]
    best = progress.best_val_loss
    return render_card(
        name=run_dir.name,
        model=model,
        train=train,
        n_params=n_params,
        data=data,
        progress={
            **asdict(progress),
            "epoch": epoch,
            "precision": precision,
            "world_size": world_size,
            "loss": losses[-1] if losses else None,
            "best_val_ppl": perplexity(best) if best is not None else None,
            "last_val_loss": evals[-1]["val_loss"] if evals else None,
            "last_val_step": evals[-1]["step"] if evals else None,
        },
        curve=curve,
        origin=origin,
        path=str(Path(run_dir).resolve()),
    )
