"""`lumenlm inspect`: run the chosen analyses on one text and write their files, then an
index.html linking them. Every file is written atomically (modelio), index.html last, so
an interrupted run leaves whole files and no index pointing at missing ones. The pages
make no network request (inline CSS, local images only)."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lumenlm.errors import ConfigError
from lumenlm.inspect import ablation, attention, attribution, induction, lens, token_loss
from lumenlm.inspect.text import Encoded, check_top_k, encode_text, tokenizer_of
from lumenlm.modelio import atomic_write_text


@dataclass(frozen=True)
class Analysis:
    """One analysis: what it shows, how to compute its JSON-able data, how to write it."""

    title: str
    compute: Callable[[Any, Encoded, int, Any], dict[str, Any]]
    write: Callable[[dict[str, Any], Path], list[Path]]


ANALYSES: dict[str, Analysis] = {
    "attention": Analysis(
        "Attention patterns per layer and head",
        lambda m, e, k, t: attention.compute(m, e, k),
        attention.write,
    ),
    "logit_lens": Analysis("Logit lens: the prediction after each layer", lens.compute, lens.write),
    "token_loss": Analysis(
        "Per-token loss (hover for predictions)", token_loss.compute, token_loss.write
    ),
    "dla": Analysis(
        "Direct logit attribution of heads and layers to the predicted token",
        lambda m, e, k, t: attribution.compute(m, e, k, t),
        attribution.write,
    ),
    "head_ablation": Analysis(
        "Head ablation: loss change per zeroed head",
        lambda m, e, k, t: ablation.compute(m, e, k),
        ablation.write,
    ),
    "induction": Analysis(
        "Induction-head scores on a repeated random sequence",
        lambda m, e, k, t: induction.induction_scores(m, t),
        induction.write,
    ),
}


def parse_analyses(spec: str | Sequence[str] | None) -> list[str]:
    """`"a,b"` or a list -> the names, checked; None or "all" -> every analysis."""
    if spec is None or spec == "all":
        return list(ANALYSES)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in ANALYSES]
    if unknown or not names:
        what = f"unknown analysis {unknown[0]!r}" if unknown else "--analyses is empty"
        raise ConfigError(f"{what}; choose from {', '.join(ANALYSES)} (comma-separated)")
    return list(dict.fromkeys(names))


@dataclass
class Report:
    """What `write_report` wrote: files per analysis, the index, and any notice."""

    files: dict[str, list[Path]]
    index: Path
    notice: str | None


def run_analyses(
    model: Any,
    text: str,
    analyses: str | Sequence[str] | None = None,
    top_k: int = 5,
    tokenizer: Any = None,
) -> dict[str, dict[str, Any]]:
    """The JSON-able results of `analyses` (all by default) on `text`, by name: the
    entry point for a JSON endpoint."""
    names = parse_analyses(analyses)
    check_top_k(top_k, model.config.vocab_size)
    tok = tokenizer_of(model, tokenizer)
    enc = encode_text(model, tok, text)
    return {name: ANALYSES[name].compute(model, enc, top_k, tok) for name in names}


def write_report(
    model: Any,
    text: str,
    out_dir: str | Path,
    analyses: str | Sequence[str] | None = None,
    top_k: int = 5,
    tokenizer: Any = None,
) -> Report:
    """Compute and write `analyses` on `text` into `out_dir`, then index.html."""
    names = parse_analyses(analyses)
    check_top_k(top_k, model.config.vocab_size)
    tok = tokenizer_of(model, tokenizer)
    enc = encode_text(model, tok, text)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {}
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        results[name] = ANALYSES[name].compute(model, enc, top_k, tok)
        files[name] = ANALYSES[name].write(results[name], out)
    data = out / "inspect.json"
    atomic_write_text(data, json.dumps(results) + "\n")
    index = out / "index.html"
    atomic_write_text(index, render_index(text, enc, files, data, model))
    return Report(files=files, index=index, notice=enc.notice)


def render_index(
    text: str, enc: Encoded, files: dict[str, list[Path]], data: Path, model: Any
) -> str:
    """index.html: the text, then each analysis with its pictures shown and files linked."""
    cfg = model.config
    parts = []
    for name, paths in files.items():
        links = " · ".join(
            f"<a href='{html.escape(p.name)}'>{html.escape(p.name)}</a>" for p in paths
        )
        imgs = "".join(
            f"<p><a href='{html.escape(p.name)}'><img src='{html.escape(p.name)}' "
            f"alt='{html.escape(name)}'></a></p>"
            for p in paths
            if p.suffix == ".png"
        )
        parts.append(
            f"<h2 id='{name}'>{html.escape(ANALYSES[name].title)}</h2><p>{links}</p>{imgs}"
        )
    notice = f"<p><b>{html.escape(enc.notice)}</b></p>" if enc.notice else ""
    src = getattr(model, "model_dir", None)
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>lumenlm inspect</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:80em}"
        "img{max-width:100%;border:1px solid #ccc}pre{white-space:pre-wrap;background:#f4f4f4;"
        "padding:.6em}</style></head><body><h1>lumenlm inspect</h1>"
        f"<p>model: {html.escape(str(src) if src else 'in memory')} · {cfg.n_layers} layers × "
        f"{cfg.n_heads} heads ({cfg.n_kv_heads} KV) · d_model {cfg.d_model} · "
        f"{len(enc.ids)} tokens · all data: <a href='{data.name}'>{data.name}</a></p>"
        f"{notice}<pre>{html.escape(text)}</pre>"
        f"<p>{' · '.join(f'<a href=#{n}>{n}</a>' for n in files)}</p>{''.join(parts)}"
        "</body></html>\n"
    )
