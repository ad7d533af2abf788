"""One short run end to end: the run directory, metrics, checkpoints, card, `lumenlm runs`;
and the parts it is made of: schedule, optimizer groups, config resolution, the card."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lumenlm.cli import main
from lumenlm.modelio import load
from lumenlm.train import list_runs, train
from lumenlm.train.resolve import resolve_config, split_overrides
from lumenlm.train.schedule import lr_at
from lumenlm.train.trainer import Trainer
from train_helpers import SHORT_PLAN, make_dataset, overrides, train_argv


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = make_dataset(tmp_path_factory.mktemp("data"), n_train=3000, n_val=400, tokenizer=True)
    out = tmp_path_factory.mktemp("runs")
    return train(
        "tiny-gpt2",
        data,
        out,
        overrides(
            max_steps=30,
            n_kv_heads=None,
            lr=3e-3,
            checkpoint_interval=10,
            keep_checkpoints=2,
            dropout=0.1,
        ),
        device="cpu",
        progress_bar=False,
    )


def test_run_dir_layout(run: Path) -> None:
    import re

    assert re.fullmatch(r"run_[a-z0-9]{8}_\d{8}_\d{6}", run.name)
    for name in ("config.json", "metrics.jsonl", "loss_curve.png", "README.md"):
        assert (run / name).is_file(), name
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("."))
    assert ckpts == ["best", "last", "step_20", "step_30"]  # retention keeps 2 periodic
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preset"] == "tiny-gpt2" and cfg["model"]["vocab_size"] == 300  # from the data
    assert cfg["train"]["max_steps"] == 30 and cfg["status"] == "finished"
    assert cfg["model"]["attn_dropout"] == 0.1


def test_metrics_and_falling_loss(run: Path) -> None:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if "loss" in r]
    for key in (
        "step",
        "epoch",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "mfu",
        "elapsed_s",
        "tokens_seen",
    ):
        assert key in train_recs[0], key
    assert [r["step"] for r in train_recs] == list(range(1, 31))
    assert train_recs[-1]["loss"] < train_recs[0]["loss"] - 0.3
    vals = [r for r in recs if r.get("val_loss") is not None]
    assert [r["step"] for r in vals] == [5, 10, 15, 20, 25, 30]
    assert vals[-1]["val_loss"] < vals[0]["val_loss"]


def test_checkpoints_are_loadable_model_dirs(run: Path) -> None:
    for name in ("best", "last", "step_20"):
        model = load(run / "checkpoints" / name)
        assert model.tokenizer is not None
        assert (run / "checkpoints" / name / "README.md").exists()
    best = json.loads((run / "config.json").read_text())["best_step"]
    state = json.loads((run / "checkpoints/best/trainer_state.json").read_text())
    assert state["step"] == best
    model = load(run)  # a run dir loads its best checkpoint
    assert torch.equal(model.tok_emb.weight, load(run / "checkpoints/best").tok_emb.weight)
    x = torch.randint(0, 300, (1, 8))
    assert torch.isfinite(model(x).logits).all()


def test_model_card(run: Path) -> None:
    card = (run / "README.md").read_text()
    n = load(run / "checkpoints/last").num_parameters()
    assert f"**{n:,}**" in card and "loss_curve.png" in card and "Best val loss" in card


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=1000, n_val=300)


def test_card_survives_a_huge_val_loss(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    t = Trainer(
        *_configs(),
        dataset,
        tmp_path / "run",
        progress_bar=False,
    )
    t.p.best_val_loss = 5000.0
    assert "Best val perplexity" in t._card(curve=None)


def _configs():  # type: ignore[no-untyped-def]
    _, m, t = resolve_config("tiny", None, overrides(**SHORT_PLAN))
    return m.replace(vocab_size=300), t


def test_perplexity_is_clamped() -> None:
    from lumenlm.train.metrics import perplexity

    assert perplexity(1e6) == math.exp(700.0)


def test_runs_command(run: Path, capsys) -> None:
    rows = list_runs(run.parent)
    assert rows[0]["run"] == run.name and rows[0]["best_val_loss"] is not None
    assert main(["runs", str(run.parent)]) == 0
    out = capsys.readouterr().out
    assert run.name in out and "best_val_loss" in out


def test_schedule_is_warmup_then_cosine_to_floor() -> None:
    kw = {"lr": 1.0, "total_steps": 110, "warmup_steps": 10, "min_lr_ratio": 0.1}
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)


def test_optimizer_groups_decay_matrices_only() -> None:
    from lumenlm.model import GPT
    from lumenlm.train.optim import param_groups

    _, m, _t = resolve_config("tiny-gpt2")
    groups = param_groups(GPT(m), 0.1)
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_overrides_resolution(tmp_path: Path) -> None:
    m, t = split_overrides({"lr": 1, "train.seed": 3, "model.d_model": 64, "n_layers": 1})
    assert m == {"d_model": 64, "n_layers": 1} and t == {"lr": 1, "seed": 3}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: tiny\nmodel:\n  d_model: 128\ntrain:\n  lr: 0.01\n")
    name, model, train_cfg = resolve_config(None, cfg, {"seed": 5})
    assert name == "tiny" and model.d_model == 128 and model.d_head == 32
    assert train_cfg.lr == 0.01 and train_cfg.seed == 5


def test_explicit_d_head_is_kept(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"preset": "tiny", "model": {"d_head": 8}}))
    _, m, _ = resolve_config(None, f, {"d_model": 128})
    assert m.d_model == 128 and m.d_head == 8
    _, m, _ = resolve_config("tiny", None, {"d_model": 128})
    assert m.d_head == 32  # derived: follows the new width


def test_presets_carry_card_recipes() -> None:
    _, _, lib = resolve_config("librarian-1.3m")
    assert (lib.batch_size, lib.lr, lib.weight_decay, lib.early_stopping_patience) == (
        32,
        1e-4,
        0.01,
        5,
    )
    _, lm, lum = resolve_config("lumiere-1m")
    assert (lum.stride, lum.warmup_steps, lum.max_epochs, lum.early_stopping_on) == (
        8,
        500,
        250,
        "epoch",
    )
    assert lm.attn_dropout == 0.1
    _, _, base = resolve_config("lumenbase-128m")
    assert (base.batch_size, base.grad_accum, base.weight_decay) == (12, 4, 0.1)


def test_config_file_and_cli_set(tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "d", n_train=1500, n_val=300)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("preset: tiny\ntrain:\n  beta2: 0.99\n  warmup_steps: 1\n")
    code = main(
        train_argv(
            data,
            tmp_path / "r",
            preset=None,
            sets={"max_steps": 3, "seed": 11},
            extra=["--config", str(cfg), "--precision", "bf16"],
        )
    )
    assert code == 0, capsys.readouterr().err
    run = next((tmp_path / "r").iterdir())
    doc = json.loads((run / "config.json").read_text())
    assert doc["train"]["seed"] == 11 and doc["train"]["beta2"] == 0.99
    assert doc["train"]["warmup_steps"] == 3  # --set beats the file
    assert doc["precision"] == "bf16"
