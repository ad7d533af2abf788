"""The card every run writes (README.md): the seed cards' sections, every number traced to
a file of the run, the evaluation JSON reported once there is one, and the same card (with
Hugging Face front matter) in an HF export of the run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from card_numbers import card_numbers, run_documents, traced, untraced
from data_helpers import write_stories
from lumenlm.data.prepare import PrepareConfig, prepare_dataset
from lumenlm.modelio import load
from lumenlm.train import train
from lumenlm.train.card import write_card
from train_helpers import overrides

SECTIONS = ("## Model Details", "## Model Architecture", "## Data and Tokenizer",
            "## Training Configuration", "## Evaluation Results",
            "### Validation during training", "## Loss Curve", "## How to Use",
            "## Limitations")  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TinyStories-layout folder that lacks the official validation file."""
    src = tmp_path_factory.mktemp("ts")
    write_stories(src / "TinyStories-train.txt", n=300)
    return src


@pytest.fixture(scope="module")
def run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on the prepared corpus."""
    src = corpus
    data = tmp_path_factory.mktemp("data") / "prepared"
    prepare_dataset(PrepareConfig(dataset="tinystories", out=data, source=str(src),
                                  vocab_size=300, progress=False))  # fmt: skip
    over = overrides(max_steps=6, eval_interval=3, checkpoint_interval=3, lr=3e-3)
    return train("tiny", data, tmp_path_factory.mktemp("runs"), over, device="cpu",
                 progress_bar=False)  # fmt: skip


def test_run_card_has_the_seed_sections_and_real_paths(run: Path, corpus: Path) -> None:
    card = (run / "README.md").read_text()
    heads = [line for line in card.splitlines() if line.startswith("#")]
    assert [h for h in heads if h in SECTIONS] == list(SECTIONS)  # all, in order
    n = load(run / "checkpoints/last").num_parameters()
    assert f"**{n:,}**" in card and f"![Training loss]({run.resolve() / 'loss_curve.png'})" in card
    assert "PATH" not in card and f'load("{run.resolve()}")' in card
    assert f"lumenlm export {run.resolve()} --out" in card
    meta = json.loads((Path(json.loads((run / "config.json").read_text())["data_dir"])
                       / "meta.json").read_text())  # fmt: skip
    train_file = meta["source"]["files"][0]
    digest = hashlib.sha256((corpus / train_file["name"]).read_bytes()).hexdigest()
    assert f"`{train_file['name']}`" in card and digest in card  # the file and its sha256
    assert "Missing or partial official files" in card
    assert meta["source"]["notes"][0] in card  # the missing validation file, as prepare said
    assert meta["tokenizer"]["sha256"] in card and "`<|endoftext|>`" in card


def test_every_number_of_the_run_card_is_in_a_file_of_the_run(run: Path) -> None:
    missing, found = untraced((run / "README.md").read_text(), run_documents(run))
    assert found > 30
    assert not missing, f"numbers in the card with no source file: {missing}"


def test_the_card_reports_an_evaluation_json_with_its_protocol(
    run: Path, shared_data: Path, tmp_path: Path
) -> None:
    from lumenlm.evaluate import evaluate_lm, evaluate_tasks
    from lumenlm.evaluate.report import build_report, write_json

    copy = tmp_path / run.name
    import shutil

    shutil.copytree(run, copy)  # the module's run stays without an evaluation
    model = load(copy)
    cfg = json.loads((copy / "config.json").read_text())
    lm = evaluate_lm(model, cfg["data_dir"], "val", batch_size=16, progress=False)
    tasks = evaluate_tasks(model, ["arc-easy", "wikitext"], model.tokenizer, shared_data,
                           limit=3, batch_size=8, download=False)  # fmt: skip
    doc = build_report(lm, tasks, {"model": str(model.model_dir), "data": cfg["data_dir"]})
    write_json(doc, copy / "eval.json")
    card = write_card(copy).read_text()
    best = json.loads((copy / "checkpoints/best/trainer_state.json").read_text())["step"]
    assert f"Evaluated: `{model.model_dir}` (the weights of step {best})" in card
    assert "`eval.json`" in card and f"{lm.perplexity:.4f}" in card
    assert f"{100 * doc['tasks']['arc-easy']['acc']:.2f}%" in card
    assert f"{doc['tasks']['wikitext']['word_perplexity']:.4f}" in card
    assert f"stride {lm.stride}" in card and "acc_norm" in card and "words counted" in card
    missing, found = untraced(card, run_documents(copy, copy / "eval.json"))
    assert found > 50
    assert not missing, f"numbers in the card with no source file: {missing}"


def test_lumenlm_eval_out_into_the_run_updates_its_card(run: Path, tmp_path: Path) -> None:
    import shutil

    from lumenlm.cli import main

    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    data = json.loads((copy / "config.json").read_text())["data_dir"]
    elsewhere = tmp_path / "report.json"
    assert (
        main(["eval", str(copy), "--data", data, "--device", "cpu", "--out", str(elsewhere)]) == 0
    )
    assert "`report.json`" not in (copy / "README.md").read_text()  # not the run's: left alone
    assert main(["eval", str(copy), "--data", data, "--device", "cpu",
                 "--out", str(copy / "eval.json")]) == 0  # fmt: skip
    doc = json.loads((copy / "eval.json").read_text())
    assert f"{doc['lm']['perplexity']:.4f}" in (copy / "README.md").read_text()


def test_an_hf_export_of_the_run_carries_its_card(run: Path, tmp_path: Path) -> None:
    from lumenlm.export.hf import export_hf

    out = export_hf(load(run), tmp_path / "hf")
    text = (out / "README.md").read_text()
    head, _, body = text.partition("\n---\n\n")
    assert head.startswith("---\nlibrary_name: transformers\n")
    assert body == (run / "README.md").read_text()


def test_card_numbers_check_can_fail() -> None:
    found = card_numbers("| Loss | 3.1416 | 12.50% | 1,234 | `sha 999` | 0.5 (step 7) |")
    assert [w for w, *_ in found] == ["3.1416", "12.50%", "1,234", "0.5", "7"]
    assert traced(3.1416, 4, False, [3.14159]) and not traced(3.1416, 4, False, [3.15])
    assert traced(12.5, 2, True, [0.125]) and not traced(1234, 0, False, [1235.0])
    missing, _ = untraced("| Loss | 2.7183 | 99 |", [{"loss": 2.718281828}])
    assert missing == ["99"]


def test_training_section_names_the_optimizer_and_the_schedule_of_the_config() -> None:
    from lumenlm.train.card_sections import training

    muon = {"optimizer": "muon", "muon_lr": 0.02, "muon_momentum": 0.95, "lr": 0.002,
            "schedule": "wsd", "decay_fraction": 0.3, "warmup_steps": 20}  # fmt: skip
    text = "\n".join(training({"train": muon}, {"decay_steps": 40}, []))
    assert "Muon (Nesterov momentum 0.95)" in text and "0.02 (Muon matrices), 0.002 (AdamW)" in text
    assert "decay over the last 0.3 of the steps (fixed at 40 steps by the time budget)" in text
    adam = "\n".join(training({"train": {"lr": 0.001, "schedule": "cosine"}}, {}, []))
    assert "| AdamW (" in adam and "Muon" not in adam and "decay over" not in adam


def test_an_export_of_a_run_picks_the_runs_fullest_card(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lumenlm.export.outputs import model_card

    run = tmp_path / "run"
    for name in ("best", "last", "step_3"):
        (run / "checkpoints" / name).mkdir(parents=True)
        (run / "checkpoints" / name / "README.md").write_text(f"checkpoint {name}")
    (run / "README.md").write_text("the run's card")

    def card(name: str) -> str | None:
        return model_card(SimpleNamespace(model_dir=run / "checkpoints" / name))  # type: ignore[arg-type]

    assert card("best") == card("last") == "the run's card"  # what loading the run gives
    assert card("step_3") == "checkpoint step_3"  # a periodic checkpoint keeps its own
    (run / "MODEL_CARD.md").write_text("the reproduction's card")
    assert card("best") == "the reproduction's card"
