"""Run directories: ids, layout, and listing.

    RUNS/<run-id>/
        config.json          resolved model + train config, data dir, preset, planned steps
        metrics.jsonl        one JSON object per log/eval line
        loss_curve.png       updated during training
        README.md            model card
        checkpoints/{last,best,step_<N>}/   each a loadable model dir + trainer state

Run ids look like `run_<8 chars>_<YYYYMMDD_HHMMSS>`.

`RunRecord` is the only writer of a run's config.json: the run is created, resumed
and trained through one in-memory document, written atomically after each change.
`RunFiles` owns the rest of what a run writes besides checkpoints: metrics.jsonl (and
TensorBoard), the loss curve and the model card.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import string
import sys
import time
from pathlib import Path
from typing import Any

from lumenlm.errors import ConfigError, first_line
from lumenlm.fsutil import pid_alive
from lumenlm.modelio import atomic_write_text
from lumenlm.train.checkpoint import Progress
from lumenlm.train.metrics import MetricsLog, plot_loss_curve, read_records

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


class RunRecord:
    """A run's config.json: read once, kept in memory, written whole on every change.

    `write=False` gives a record that never touches the file (the other ranks under
    torchrun, which read the same run but must not write it).
    """

    def __init__(self, run_dir: str | Path, doc: dict[str, Any], *, write: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.doc = doc
        self.writes = write

    @property
    def path(self) -> Path:
        return self.run_dir / CONFIG

    @classmethod
    def read(cls, run_dir: str | Path, *, write: bool = True) -> RunRecord:
        """The record of an existing run; a one-line ConfigError when there is none."""
        path = Path(run_dir) / CONFIG
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{run_dir}: not a run directory (no {CONFIG}); give a folder that "
                "`lumenlm train` made (see `lumenlm runs RUNS`)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: corrupt run config ({exc})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: corrupt run config (not a JSON object)")
        return cls(run_dir, doc, write=write)

    @classmethod
    def open(cls, run_dir: str | Path, *, write: bool = True) -> RunRecord:
        """The run's record if it has one, else a new, empty one."""
        if (Path(run_dir) / CONFIG).exists():
            return cls.read(run_dir, write=write)
        return cls(run_dir, {}, write=write)

    def update(self, drop: tuple[str, ...] = (), **fields: Any) -> None:
        """Set `fields`, remove the keys in `drop`, and write the file."""
        self.doc.update(fields)
        for key in drop:
            self.doc.pop(key, None)
        self.save()

    def save(self) -> None:
        """Write the document (atomically: a crash leaves the old or the new file)."""
        if self.writes:
            atomic_write_text(self.path, json.dumps(self.doc, indent=2) + "\n")


class RunFiles:
    """metrics.jsonl, loss_curve.png, README.md and config.json of a run in training.

    Only the main process writes: on the other ranks (`enabled=False`) every method
    does nothing.
    """

    PLOT_EVERY_S = 30.0  # plotting costs ~0.3 s: throttle it

    def __init__(self, record: RunRecord, enabled: bool = True) -> None:
        self.record, self.enabled = record, enabled
        self.run_dir = record.run_dir
        self.metrics: MetricsLog | None = None
        self._last_plot = 0.0

    def mark_running(self, total_steps: int) -> None:
        """`status: running`, with this process's pid and host (for `lumenlm runs`)."""
        if self.enabled:
            self.record.update(
                status="running",
                pid=os.getpid(),
                host=socket.gethostname(),
                total_steps=total_steps,
                drop=("error",),
            )

    def mark_failed(self, exc: BaseException, diverged: bool) -> None:
        """`status: crashed` (or `diverged`) with the error's first line; never raises,
        so the original error is the one the user sees."""
        if not self.enabled:
            return
        try:
            self.record.update(status="diverged" if diverged else "crashed", error=first_line(exc))
        except Exception:
            pass

    def open_metrics(self, step: int, tensorboard: bool) -> None:
        """Append to metrics.jsonl from `step` on (a resumed run redoes later steps)."""
        if not self.enabled:
            return
        tb = self.run_dir / "tensorboard" if tensorboard else None
        self.metrics = MetricsLog(self.run_dir / METRICS, tb, resume_step=step)
        self.metrics.truncate_after(step)

    def log(self, record: dict[str, Any], plot: bool = False) -> None:
        """One metrics record; `plot` also redraws the loss curve (at most every 30 s)."""
        if self.metrics is None:
            return
        self.metrics.write(record)
        if plot and time.time() - self._last_plot >= self.PLOT_EVERY_S:
            self.plot()

    def plot(self) -> None:
        plot_loss_curve(read_metrics(self.run_dir), self.run_dir / CURVE, self.run_dir.name)
        self._last_plot = time.time()

    def close(self) -> None:
        """Flush TensorBoard events (also when the run fails)."""
        if self.metrics is not None:
            self.metrics.close()

    def write(self, p: Progress, card: str, final: bool) -> None:
        """Record the progress in config.json, write the card, and plot when final."""
        if not self.enabled:
            return
        self.record.update(
            status=p.status,
            step=p.step,
            best_val_loss=p.best_val_loss,
            best_step=p.best_step,
            total_steps=p.total_steps,
        )
        atomic_write_text(self.run_dir / CARD, card)
        if final or not (self.run_dir / CURVE).exists():
            self.plot()


def read_metrics(run_dir: str | Path, report: bool = False) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl; unreadable lines (a torn last line, stray
    bytes) are skipped, and with `report` counted in a notice on stderr."""
    path = Path(run_dir) / METRICS
    records, bad = read_records(path)
    if bad and report:
        print(f"notice: {path}: skipped {bad} unreadable line(s)", file=sys.stderr, flush=True)
    return records


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
    records = read_metrics(run_dir, report=True)
    # closing evaluations of a paused invocation never pick best/: leave them out here too
    vals = [r for r in records if r.get("val_loss") is not None and not r.get("closing")]
    best = min(vals, key=lambda r: r["val_loss"]) if vals else None
    train = [r for r in records if r.get("loss") is not None]
    return {
        "run": run_dir.name,
        "preset": cfg.get("preset"),
        "status": _status(cfg),
        "steps": records[-1].get("step", 0) if records else 0,
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
