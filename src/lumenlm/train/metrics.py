"""Metrics: the metrics.jsonl log, the loss-curve PNG and optional TensorBoard events."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from lumenlm.modelio import atomic_write_bytes, save_figure


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def perplexity(loss: float) -> float:
    """exp(loss), clamped so that a huge loss cannot overflow math.exp."""
    return math.exp(min(loss, 700.0))


def _before(record: dict[str, Any], step: int) -> bool:
    try:
        return int(record.get("step", 0)) <= step
    except (TypeError, ValueError):
        return False


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(the JSON-object lines of a metrics.jsonl, how many lines were unreadable).

    A torn last line (a crash mid-write), bytes that are not UTF-8 or not JSON, and
    JSON that is not an object are all skipped, so one damaged file never stops
    `lumenlm runs`, a card or a resume.
    """
    if not path.exists():
        return [], 0
    records, bad = [], 0
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl and mirrors to TensorBoard."""

    def __init__(
        self, path: Path, tensorboard_dir: Path | None = None, resume_step: int = 0
    ) -> None:
        self.path = path
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # A resumed run redoes the steps after its checkpoint: purge_step makes
                # TensorBoard drop the first attempt's events from there on.
                self.writer = SummaryWriter(
                    str(tensorboard_dir), purge_step=resume_step + 1 if resume_step else None
                )
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
        records, bad = read_records(self.path)
        if bad:
            print(
                f"notice: {self.path}: dropped {bad} unreadable line(s)",
                file=sys.stderr,
                flush=True,
            )
        keep = [json.dumps(r) for r in records if _before(r, step)]
        atomic_write_bytes(self.path, ("\n".join(keep) + "\n" if keep else "").encode())

    def close(self) -> None:
        """Flush and close the TensorBoard writer (safe to call twice)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def train_record(
    progress: Any, epoch: float, loss: float, lr: float, grad_norm: float,
    tokens_per_s: float, mfu: float | None, loss_scale: float | None,
) -> dict[str, Any]:  # fmt: skip
    """A training line of metrics.jsonl (`progress`: the trainer's `Progress`)."""
    record = {
        "step": progress.step,
        "epoch": epoch,
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,  # null when fp16 overflowed (step skipped)
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": mfu,
        "elapsed_s": round(progress.elapsed_s, 3),
        "tokens_seen": progress.tokens_seen,
    }
    if loss_scale is not None:
        record["loss_scale"] = loss_scale
    return record


def eval_record(
    progress: Any, epoch: float, val_loss: float, patience_left: int | None, closing: bool
) -> dict[str, Any]:
    """A validation line of metrics.jsonl; `closing` marks a paused run's last evaluation,
    which never picks best/ (`lumenlm runs` leaves it out too)."""
    record = {
        "step": progress.step,
        "epoch": epoch,
        "val_loss": val_loss,
        "val_ppl": perplexity(val_loss),
        "best_val_loss": progress.best_val_loss,
        "patience_left": patience_left,
        "elapsed_s": round(progress.elapsed_s, 3),
        "tokens_seen": progress.tokens_seen,
    }
    if closing:
        record["closing"] = True
    return record


class Throughput:
    """Train loss and tokens/s since the last log line, evaluation and saving left out."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.since, self.steps, self.loss_sum = time.time(), 0, 0.0

    def add(self, loss: float) -> None:
        """Count one optimizer step and its loss."""
        self.steps += 1
        self.loss_sum += loss

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation, a checkpoint) out of the training time."""
        self.since += seconds

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    def tokens_per_s(self, tokens_per_step: int) -> float:
        return self.steps * tokens_per_step / max(time.time() - self.since, 1e-9)


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
    save_figure(fig, path)


def matmul_params(model: Any) -> int:
    """Weights that take part in a matmul: every nn.Linear weight, shared ones once.

    Embedding lookups cost no FLOPs; a tied input embedding counts through the output
    head that shares it. Norm gains and biases are a rounding error and are left out.
    """
    import torch

    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def flops_per_token(
    n_matmul_params: int, n_layers: int, context_length: int, d_model: int
) -> float:
    """Training FLOPs per token: 6N for the matmuls + 12*L*T*d for attention (PaLM appendix B).

    N counts the weights that take part in a matmul (`matmul_params`).
    """
    return 6.0 * n_matmul_params + 12.0 * n_layers * context_length * d_model


def model_flops_utilization(
    tokens_per_s: float, flops_per_token: float, peak_flops: float | None, world_size: int = 1
) -> float | None:
    """MFU per device: `tokens_per_s` counts all processes, `peak_flops` is one device's."""
    if not peak_flops:
        return None
    return tokens_per_s * flops_per_token / (peak_flops * max(world_size, 1))


# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' data sheets, most
# specific name first, and whether the GPU has TF32 (Ampere and later: at half the
# bf16 rate). V100 and T4 have fp16 tensor cores only, so fp32 gets no estimate there.
_PEAK_BF16 = (
    ("gh200", 989e12, True),
    ("h200", 989e12, True),
    ("h100 pcie", 756e12, True),
    ("h100 nvl", 835e12, True),
    ("h100", 989e12, True),
    ("h800", 989e12, True),
    ("b200", 2250e12, True),
    ("a100", 312e12, True),
    ("a800", 312e12, True),
    ("l40s", 362e12, True),
    ("l40", 181e12, True),
    ("l4", 121e12, True),
    ("4090", 165e12, True),
    ("a10g", 70e12, True),
    ("a10", 125e12, True),
    ("3090", 71e12, True),
    ("v100", 125e12, False),
    ("t4", 65e12, False),
)


def guess_peak_flops(
    device_type: str, precision: str, tf32: bool = True, name: str | None = None
) -> float | None:
    """Peak dense FLOP/s of the current CUDA GPU for MFU, from its name; None if unknown/CPU.

    fp32 counts at the TF32 rate when TF32 is on and the GPU has it, and gets no
    estimate otherwise (plain fp32 runs on the CUDA cores; give `peak_tflops` then).
    """
    if device_type != "cuda":
        return None
    if name is None:
        import torch

        name = torch.cuda.get_device_name()
    lowered = name.lower()
    for key, peak, has_tf32 in _PEAK_BF16:
        if key in lowered:
            if precision == "fp32":
                return peak / 2 if tf32 and has_tf32 else None
            return peak
    return None


def mfu_meter(model: Any, train: Any, device: Any, precision: str, world_size: int) -> Any:
    """`tokens_per_s -> MFU` for `model` (a GPT, before any sharding) trained with `train`
    (a TrainConfig: peak_tflops, tf32) on `device`; the MFU is None where no peak is known."""
    m = model.config
    fpt = flops_per_token(matmul_params(model), m.n_layers, m.context_length, m.d_model)
    peak = peak_flops(train.peak_tflops, device, precision, train.tf32)
    return lambda tps: model_flops_utilization(tps, fpt, peak, world_size)


def peak_flops(
    peak_tflops: float | None, device: Any, precision: str, tf32: bool = True
) -> float | None:
    """Peak FLOP/s for MFU: `train.peak_tflops` when given, else the data-sheet guess."""
    if peak_tflops:
        return peak_tflops * 1e12
    return guess_peak_flops(device.type, precision, tf32)
