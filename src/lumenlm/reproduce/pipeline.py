"""The reproduction pipeline: each step checks its own output and is skipped when valid.

A reproduction lives in one folder (`--out`): `data/` (the prepared dataset), `runs/`
(the one training run), `eval.json`, `sample.txt`, `MODEL_CARD.md` and `hf/` (the
transformers export), plus `reproduce.json`, which records the card, recipe and budget
and which steps are done. A second call with the same folder skips what is done; an
interrupted training resumes from its last checkpoint with the budget it has left.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lumenlm.errors import ConfigError, DataError, LumenError
from lumenlm.modelio import atomic_write_text
from lumenlm.presets import get_preset, recipe_overrides
from lumenlm.reproduce.cards import Card, get_card
from lumenlm.reproduce.report import comparison_rows, format_comparison, model_card
from lumenlm.train.stop import TrainingInterrupted

STATE = "reproduce.json"
EVAL = "eval.json"
SAMPLE = "sample.txt"
CARD = "MODEL_CARD.md"
HF = "hf"
PROMPTS = {"tinystories": "Once upon a time", "wikitext-2": "The history of"}


@dataclass
class Reproduction:
    """One reproduction folder and what it is for."""

    card: Card
    recipe: str
    budget_minutes: float
    out: Path
    data_root: Path | None = None
    device: str = "auto"
    progress: bool = True
    say: Callable[[str], None] = print
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    def run_dir(self) -> Path | None:
        """The reproduction's training run, once it exists."""
        runs = sorted(self.runs_dir.glob("run_*")) if self.runs_dir.is_dir() else []
        return runs[-1] if runs else None

    def save_state(self) -> None:
        atomic_write_text(self.out / STATE, json.dumps(self.state, indent=2) + "\n")


# -- the steps: (name, is_done, run) ---------------------------------------------------


def _prepared(r: Reproduction) -> bool:
    from lumenlm.data.tokens import read_meta

    try:
        read_meta(r.data_dir)
    except DataError:
        return False
    return all((r.data_dir / f"{s}.bin").is_file() for s in ("train", "val", "test"))


def _official_present(r: Reproduction) -> bool:
    """Whether the card's official data files are in the data root (else: local pieces)."""
    root = r.data_root or Path(os.environ.get("LUMENLM_DATA", "."))
    found = {p.name for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()
    return bool(r.card.official_files) and set(r.card.official_files) <= found


def _prepare(r: Reproduction) -> str:
    from lumenlm.data.prepare import PrepareConfig, prepare_dataset

    tok = get_preset(r.card.preset).tokenizer
    fraction = float(tok.get("fraction", 1.0))
    note = ""
    if fraction < 1.0 and not _official_present(r):
        # the card's fraction is of the full corpus: of the local pieces it would leave
        # a few stories, so all of them are used (and the card says so)
        note = f"; the card's fraction {fraction:g} is of the full corpus, here all local text"
        fraction = 1.0
    config = PrepareConfig(
        dataset=r.card.dataset,
        out=r.data_dir,
        vocab_size=int(tok.get("vocab_size", 8000)),
        special_tokens=list(tok.get("special_tokens", ["<|endoftext|>", "<|pad|>"])),
        fraction=fraction,
        force=True,
        progress=r.progress,
    )
    try:
        meta = prepare_dataset(config)
    except DataError as exc:
        where = r.data_root or "$LUMENLM_DATA (or --data-root DIR)"
        raise DataError(
            f"{exc}; for `lumenlm reproduce {r.card.key}` put the {r.card.dataset} files "
            f"in {where}/{_data_subdir(r.card.dataset)}/"
        ) from None
    r.state["fraction"] = fraction
    return f"{meta['splits']['train']['tokens']:,} train tokens{note}"


def _data_subdir(dataset: str) -> str:
    from lumenlm.data.datasets import get_spec

    spec = get_spec(dataset)
    return str(spec.dirnames[0])


def _trained(r: Reproduction) -> bool:
    run = r.run_dir()
    done = r.state.get("train", {}).get("done", False)
    return bool(done and run is not None and (run / "checkpoints" / "last").is_dir())


def _train(r: Reproduction) -> str:
    from lumenlm.train import train

    run = r.run_dir()
    common = {"device": r.device, "progress_bar": r.progress}
    if run is not None and not (run / "checkpoints" / "last").is_dir():
        shutil.rmtree(run)  # stopped before its first checkpoint: nothing to resume
        run = None
    if run is None:
        overrides = recipe_overrides(r.card.preset, r.recipe)
        run = train(
            r.card.preset, r.data_dir, r.runs_dir, overrides,
            max_minutes=r.budget_minutes, **common,
        )  # fmt: skip
    else:
        state = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
        left = r.budget_minutes - float(state.get("elapsed_s", 0.0)) / 60
        if state.get("status") in ("finished", "early_stopped") or left <= 0.05:
            pass  # the budget was spent; the interruption came after training
        else:
            r.say(f"resuming {run.name} at step {state['step']} with {left:.1f} minute(s) left")
            train(resume=run, max_minutes=left, **common)
    r.state["train"] = {"done": True, "run": run.name}
    cfg = json.loads((run / "config.json").read_text())
    return f"{run} ({cfg.get('status')})"


def _evaluated(r: Reproduction) -> bool:
    try:
        doc = json.loads((r.out / EVAL).read_text())
    except (OSError, ValueError):
        return False
    want_lm = bool(r.card.metrics)
    return (not want_lm or "lm" in doc) and set(r.card.tasks) <= set(doc.get("tasks", {}))


def _evaluate(r: Reproduction) -> str:
    from lumenlm.evaluate import evaluate_lm, evaluate_tasks
    from lumenlm.evaluate.report import build_report
    from lumenlm.modelio import load

    run = r.run_dir()
    assert run is not None
    model = load(run)
    lm = evaluate_lm(model, r.data_dir, "val", batch_size=16, progress=False)
    tasks: dict[str, Any] = {}
    names = list(r.card.tasks)
    if r.card.dataset == "wikitext-2":
        names.append("wikitext")  # word perplexity, comparable with published WikiText-2
    for name in names:
        limit = 1024 if name == "hellaswag" else None  # the card scored 1,024 items
        try:
            tasks.update(
                evaluate_tasks(
                    model, [name], model.tokenizer, r.data_root, limit, 16, download=False
                )
            )
        except DataError as exc:
            if name != "wikitext":
                raise
            r.say(f"word perplexity skipped: {exc}")  # optional: the card does not report it
    info = {"model": str(run), "split": "val", "hellaswag_limit": 1024 if tasks else None}
    doc = build_report(lm, tasks or None, info)
    atomic_write_text(r.out / EVAL, json.dumps(doc, indent=2) + "\n")
    return f"val loss {lm.loss:.4f}, perplexity {lm.perplexity:.2f}"


def _sampled(r: Reproduction) -> bool:
    p = r.out / SAMPLE
    return p.is_file() and p.stat().st_size > 0


def _sample(r: Reproduction) -> str:
    from lumenlm.infer import SamplingParams, generate
    from lumenlm.modelio import load

    run = r.run_dir()
    assert run is not None
    model = load(run)
    prompt = PROMPTS.get(r.card.dataset, "Once upon a time")
    params = SamplingParams(max_new_tokens=120, temperature=0.8, top_k=50, top_p=0.9, seed=0)
    result = generate(model, prompt, params, tokenizer=model.tokenizer)[0]
    atomic_write_text(r.out / SAMPLE, prompt + result.text + "\n")
    return f"{len(result.token_ids)} tokens from {prompt!r}"


def _carded(r: Reproduction) -> bool:
    card = r.out / CARD
    ev = r.out / EVAL
    return card.is_file() and ev.is_file() and card.stat().st_mtime >= ev.stat().st_mtime


def _write_card(r: Reproduction) -> str:
    run = r.run_dir()
    assert run is not None
    text = model_card(r.card, r.recipe, r.budget_minutes, run, r.data_dir, r.out)
    atomic_write_text(r.out / CARD, text)
    atomic_write_text(run / CARD, text)
    return str(r.out / CARD)


def _exported(r: Reproduction) -> bool:
    hf = r.out / HF
    return (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()


def _export(r: Reproduction) -> str:
    from lumenlm.export.hf import export_hf
    from lumenlm.modelio import load

    run = r.run_dir()
    assert run is not None
    out = export_hf(load(run), r.out / HF, force=True)  # carries the run's MODEL_CARD.md
    return str(out)


STEPS: list[tuple[str, Callable[[Reproduction], bool], Callable[[Reproduction], str]]] = [
    ("prepare", _prepared, _prepare),
    ("train", _trained, _train),
    ("eval", _evaluated, _evaluate),
    ("sample", _sampled, _sample),
    ("card", _carded, _write_card),
    ("export", _exported, _export),
]
"""The steps in order: name, "its output exists and is valid", and the step itself."""


@contextmanager
def _data_root(root: Path | None):
    """`$LUMENLM_DATA` set to `root` while the steps look for data files."""
    if root is None:
        yield
        return
    old = os.environ.get("LUMENLM_DATA")
    os.environ["LUMENLM_DATA"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LUMENLM_DATA", None)
        else:
            os.environ["LUMENLM_DATA"] = old


def reproduce(
    name: str,
    *,
    recipe: str = "card",
    budget_minutes: float = 10.0,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Reproduction:
    """Reproduce card `name` into `out` (default `reproduce/<name>-<recipe>`), skipping
    the steps already done there; print a line per step and the comparison table."""
    card = get_card(name)
    recipe_overrides(card.preset, recipe)  # an unknown recipe fails before any work
    if budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be > 0, got {budget_minutes:g}")
    out_dir = Path(out) if out is not None else Path("reproduce") / f"{name}-{recipe}"
    root = Path(data_root).resolve() if data_root is not None else None
    if root is not None and not root.is_dir():
        raise DataError(f"--data-root {root} is not a folder; give the folder of the datasets")
    r = Reproduction(card, recipe, budget_minutes, out_dir, root, device, progress, say)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / STATE).is_file():
        r.state = json.loads((out_dir / STATE).read_text())
        was = (r.state.get("card"), r.state.get("recipe"), r.state.get("budget_minutes"))
        if was != (name, recipe, budget_minutes):
            raise ConfigError(
                f"{out_dir} holds a reproduction of {was[0]} --recipe {was[1]} "
                f"--budget-minutes {was[2]:g}; give another --out or the same options"
            )
    r.state.update({"card": name, "recipe": recipe, "budget_minutes": budget_minutes})
    r.save_state()
    with _data_root(root):
        for i, (step, done, run) in enumerate(STEPS, 1):
            head = f"[{i}/{len(STEPS)}] {step}"
            if done(r):
                say(f"{head}: done already, skipped")
                continue
            say(f"{head} ...")
            t0 = time.perf_counter()
            try:
                what = run(r)
            except TrainingInterrupted as exc:
                r.save_state()
                again = f"lumenlm reproduce {name} --recipe {recipe} " + (
                    f"--budget-minutes {budget_minutes:g} --out {out_dir}"
                )
                if root is not None:
                    again += f" --data-root {root}"
                raise TrainingInterrupted(
                    f"{exc.args[0].split('; resume with')[0]}; run the same command again "
                    f"to continue where it stopped: {again}",
                    exc.run_dir,
                    exc.exit_code - 128,
                ) from None
            except LumenError:
                r.save_state()
                raise
            r.state.setdefault("steps", {})[step] = round(time.perf_counter() - t0, 1)
            r.save_state()
            say(f"{head}: {what} ({time.perf_counter() - t0:.0f} s)")
    doc = json.loads((out_dir / EVAL).read_text())
    say(format_comparison(card, comparison_rows(card, doc)))
    return r
