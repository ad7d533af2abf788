"""The model card (README.md) of every run and checkpoint, in the seed cards' sections.

One writer for every card lumenlm produces: a run's README.md (rewritten as it trains),
each checkpoint's, the copy an export carries, and the card of `lumenlm reproduce`
(which adds only its comparison and recipe to what is built here). Every number in a
card is read from a file of the run: config.json, metrics.jsonl, the last checkpoint's
trainer_state.json, the prepared dataset's meta.json (found through config.json's
`data_dir`) and, when one is there, an evaluation JSON (`lumenlm eval --out`). While a run
trains, the trainer's in-memory progress stands in for the counters it is about to write
to those same files. The sections themselves are in `card_sections`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lumenlm.config import ModelConfig, TrainConfig
from lumenlm.errors import ConfigError
from lumenlm.train import card_sections as S
from lumenlm.train.checkpoint import Progress
from lumenlm.train.runs import CHECKPOINTS, CURVE, RunRecord, read_metrics

EVAL_NAMES = ("eval.json",)
"""An evaluation JSON in the run directory that the card reports (`lumenlm eval --out`)."""


@dataclass
class RunFacts:
    """What a card says, as read from a run's files (each part {} when its file is absent)."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    """config.json: model, train, parameters, data_dir, status, step, best_val_loss, ..."""
    state: dict[str, Any] = field(default_factory=dict)
    """checkpoints/last/trainer_state.json: step, tokens_seen, elapsed_s, total_steps, ..."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """metrics.jsonl: training and validation records."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The prepared dataset's meta.json: source files, splits, tokenizer."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """An evaluation report (`lumenlm eval --out`, reproduce's eval.json)."""
    eval_file: Path | None = None
    eval_step: int | None = None
    """The step of the checkpoint the evaluation scored (its trainer_state.json)."""
    origin: dict[str, Any] | None = None
    """Fine-tuning: the starting weights ("base") and its data ("finetune")."""
    data: dict[str, Any] = field(default_factory=dict)
    """The trainer's data summary (fine-tuning's trained-token counts)."""


@dataclass
class CardParts:
    """What a caller above the run card adds (`lumenlm reproduce`): each a list of lines
    or table rows placed in the shared sections, never a section of its own kind."""

    title: str | None = None
    about: str | None = None
    """The sentence under Model Details (default: what a run trained from scratch is)."""
    data_lines: list[str] = field(default_factory=list)
    training_rows: list[tuple[str, Any]] = field(default_factory=list)
    """Rows placed first in the Training Configuration table."""
    evaluation: list[str] = field(default_factory=list)
    """Lines placed first under Evaluation Results (e.g. a comparison table)."""
    sections: list[str] = field(default_factory=list)
    """Whole extra sections, placed before How to Use (e.g. a sample)."""
    hf_dir: Path | None = None
    """An export that exists (How to Use loads it); default: the `lumenlm export` to run."""
    remote_code: bool | None = None
    """Whether that export needs `trust_remote_code` (None: not known here)."""
    curve: bool | None = None
    """Link loss_curve.png: True always (a trainer plots it right after the card), None when
    the run has one, False never (a checkpoint's card)."""


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def read_run(
    run_dir: str | Path, data_dir: str | Path | None = None, eval_file: str | Path | None = None
) -> RunFacts:
    """The files of `run_dir` a card reports: config.json, metrics.jsonl, the last
    checkpoint's trainer state, `data_dir`'s (default: config.json's) meta.json, and
    `eval_file` (default: the run's eval.json when there is one)."""
    run = Path(run_dir)
    try:  # config.json has one reader and writer: RunRecord
        config = RunRecord.open(run, write=False).doc
    except ConfigError:
        config = {}  # a corrupt record: the card says what the other files say
    data = data_dir if data_dir is not None else config.get("data_dir")
    if eval_file is None:
        eval_file = next((run / n for n in EVAL_NAMES if (run / n).is_file()), None)
    evaluation = _json(Path(eval_file)) if eval_file else {}
    scored = evaluation.get("model")
    step = None
    if scored:  # a model dir, or a run dir (which loads its best checkpoint, else its last)
        dirs = [Path(scored), *(Path(scored) / CHECKPOINTS / n for n in ("best", "last"))]
        states = [_json(d / "trainer_state.json") for d in dirs]
        step = next((s["step"] for s in states if "step" in s), None)
    origin = None
    if config.get("init_from"):
        origin = {"base": config["init_from"], "finetune": config.get("finetune")}
    return RunFacts(
        run_dir=run,
        config=config,
        state=_json(run / CHECKPOINTS / "last" / "trainer_state.json"),
        records=read_metrics(run),
        meta=_json(Path(data) / "meta.json") if data else {},
        evaluation=evaluation,
        eval_file=Path(eval_file) if eval_file else None,
        eval_step=step,
        origin=origin,
    )


def card_text(facts: RunFacts, parts: CardParts | None = None) -> str:
    """The card of `facts`, in the seed cards' sections, with the caller's `parts`."""
    p = parts or CardParts()
    f = facts
    path = f.run_dir.resolve()
    plotted = p.curve or (p.curve is None and (f.run_dir / CURVE).is_file())
    curve = path / CURVE if plotted else None
    out = [f"# {p.title or f.run_dir.name}", ""]
    out += S.details(f.config, f.run_dir.name, p.about, f.origin)
    out += S.architecture(f.config)
    out += S.data_and_tokenizer(f.config, f.meta, f.data, f.origin, p.data_lines)
    out += S.training(f.config, f.state, p.training_rows)
    out += ["## Evaluation Results", "", *p.evaluation]
    out += S.validation(f.config, f.state, f.records)
    out += S.evaluation(f.evaluation, f.eval_file, f.eval_step)
    out += S.loss_curve(f.records, curve)
    out += p.sections
    hf = p.hf_dir.resolve() if p.hf_dir is not None else path.with_name(path.name + "-hf")
    out += S.usage(path, hf, exported=p.hf_dir is not None, remote_code=p.remote_code)
    out += S.limitations(f.config, f.meta)
    return "\n".join(out)


def write_card(run_dir: str | Path, eval_file: str | Path | None = None) -> Path:
    """Rewrite `run_dir`/README.md from its files (e.g. after `lumenlm eval RUN --out
    RUN/eval.json`, so the card reports that evaluation too)."""
    from lumenlm.modelio import atomic_write_text
    from lumenlm.train.runs import CARD

    run = Path(run_dir)
    path = run / CARD
    atomic_write_text(path, card_text(read_run(run, eval_file=eval_file)))
    return path


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
    curve: str | None = CURVE,
    origin: dict[str, Any] | None = None,
) -> str:
    """The card of a run in training: its files, with the progress the trainer is about to
    record in config.json and trainer_state.json standing in for theirs."""
    facts = read_run(run_dir)
    now = asdict(progress)
    facts.config.update(
        model=asdict(model),
        train=asdict(train),
        parameters=n_params,
        precision=precision,
        world_size=world_size,
        **{k: now[k] for k in ("status", "step", "best_val_loss", "best_step", "total_steps")},
    )
    facts.state = {**facts.state, **now, "epoch": epoch, "world_size": world_size}
    facts = replace(facts, data=data, origin=origin or facts.origin)
    return card_text(facts, CardParts(curve=curve is not None))  # RunFiles plots after it


def render_card(
    *,
    name: str,
    model: ModelConfig,
    train: TrainConfig,
    n_params: int,
    data: dict[str, Any],
    progress: dict[str, Any],
    curve: str | None = CURVE,
    origin: dict[str, Any] | None = None,
    path: str | None = None,
) -> str:
    """The card of a run that has no files yet, from its configs and `progress` (the
    counters of config.json / trainer_state.json, plus `last_val_loss`/`last_val_step`
    for a closing evaluation); `path` is the run directory (default: `name`)."""
    evals = []
    if progress.get("last_val_loss") is not None:
        evals = [{"step": progress.get("last_val_step"), "val_loss": progress["last_val_loss"],
                  "closing": progress.get("best_val_loss") is None}]  # fmt: skip
    config = {"model": asdict(model), "train": asdict(train), "parameters": n_params,
              **{k: progress.get(k) for k in ("status", "step", "best_val_loss", "best_step",
                                              "total_steps", "precision", "world_size")}}  # fmt: skip
    facts = RunFacts(Path(path or name), config=config, state=dict(progress), records=evals,
                     data=data, origin=origin)  # fmt: skip
    return card_text(facts, CardParts(curve=None if curve else False))
