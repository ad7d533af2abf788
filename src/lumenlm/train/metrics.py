"""Metrics: the metrics.jsonl log, the loss-curve PNG and optional TensorBoard events."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from lumenlm.modelio import atomic_write_bytes


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl and mirrors to TensorBoard."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        self.path = path
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(tensorboard_dir))
            except ImportError:
                print(
                    "notice: tensorboard is not installed; skipping TensorBoard events",
                    file=sys.stderr,
                )

    def write(self, record: dict[str, Any]) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if (
                    key != "step"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self.writer.add_scalar(key, value, record["step"])

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run re-logs the steps it redoes)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        atomic_write_bytes(self.path, ("\n".join(keep) + "\n" if keep else "").encode())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_loss_curve(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Train and validation loss against step, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def flops_per_token(n_params: int, n_layers: int, context_length: int, d_model: int) -> float:
    """Training FLOPs per token: 6N for the matmuls + 12*L*T*d for attention (PaLM appendix B)."""
    return 6.0 * n_params + 12.0 * n_layers * context_length * d_model


def model_flops_utilization(
    tokens_per_s: float, flops_per_token: float, peak_flops: float | None, world_size: int = 1
) -> float | None:
    """MFU per device: `tokens_per_s` counts all processes, `peak_flops` is one device's."""
    if not peak_flops:
        return None
    return tokens_per_s * flops_per_token / (peak_flops * max(world_size, 1))


def guess_peak_flops(device_type: str, precision: str) -> float | None:
    """Peak dense FLOP/s of the current CUDA GPU for MFU, from its name; None if unknown/CPU."""
    if device_type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name().lower()
    table = {
        "h200": 989e12,
        "h100": 989e12,
        "a100": 312e12,
        "l40": 181e12,
        "4090": 165e12,
        "a10": 125e12,
        "3090": 71e12,
        "v100": 125e12,
        "t4": 65e12,
    }
    for key, peak in table.items():
        if key in name:
            return peak if precision != "fp32" else peak / 2  # rough TF32 rate
    return None
