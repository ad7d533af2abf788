"""Run directories: ids, layout, and listing.

    RUNS/<run-id>/
        config.json          resolved model + train config, data dir, preset, planned steps
        metrics.jsonl        one JSON object per log/eval line
        loss_curve.png       updated during training
        README.md            model card
        checkpoints/{last,best,step_<N>}/   each a loadable model dir + trainer state

Run ids look like `run_<8 chars>_<YYYYMMDD_HHMMSS>`.
"""

from __future__ import annotations

import json
import secrets
import socket
import string
import time
from pathlib import Path
from typing import Any

from lumenlm.fsutil import pid_alive

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CURVE = "loss_curve.png"
CARD = "README.md"
CHECKPOINTS = "checkpoints"


def new_run_id(now: float | None = None) -> str:
    """`run_<8 random [a-z0-9]>_<YYYYMMDD_HHMMSS>` (local time)."""
    alphabet = string.ascii_lowercase + string.digits
    tag = "".join(secrets.choice(alphabet) for _ in range(8))
    return f"run_{tag}_{time.strftime('%Y%m%d_%H%M%S', time.localtime(now))}"


def create_run_dir(out_dir: str | Path, run_id: str | None = None) -> Path:
    """Make a fresh `out_dir/<run-id>/` (with checkpoints/)."""
    root = Path(out_dir)
    while True:
        path = root / (run_id or new_run_id())
        try:
            path.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:
            if run_id is not None:
                raise
    (path / CHECKPOINTS).mkdir()
    return path


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (a torn last line is skipped)."""
    path = Path(run_dir) / METRICS
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _status(cfg: dict[str, Any]) -> str:
    """The recorded status; `stopped?` for a `running` run whose process on this host is gone."""
    status = str(cfg.get("status", "?"))
    pid, host = cfg.get("pid"), cfg.get("host")
    if (
        status == "running"
        and isinstance(pid, int)
        and host == socket.gethostname()
        and not pid_alive(pid)
    ):
        return "stopped?"
    return status


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """Preset, steps done, best val loss (and its step), last train loss of one run."""
    try:
        cfg = json.loads((run_dir / CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        cfg = {}
    records = read_metrics(run_dir)
    # closing evaluations of a paused invocation never pick best/: leave them out here too
    vals = [r for r in records if r.get("val_loss") is not None and not r.get("closing")]
    best = min(vals, key=lambda r: r["val_loss"]) if vals else None
    train = [r for r in records if r.get("loss") is not None]
    return {
        "run": run_dir.name,
        "preset": cfg.get("preset"),
        "status": _status(cfg),
        "steps": records[-1]["step"] if records else 0,
        # the trainer's own choice (it honours early_stopping_min_delta), else the metrics'
        "best_val_loss": cfg["best_val_loss"]
        if cfg.get("best_step") is not None
        else (best["val_loss"] if best else None),
        "best_step": cfg["best_step"]
        if cfg.get("best_step") is not None
        else (best["step"] if best else None),
        "last_loss": train[-1]["loss"] if train else None,
        "path": str(run_dir),
    }


def list_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Summaries of every run under `runs_dir` (dirs with a config.json), oldest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and (p / CONFIG).exists()]
    runs.sort(key=lambda p: (p.name.rsplit("_", 2)[-2:], p.name))
    return [summarize_run(p) for p in runs]
