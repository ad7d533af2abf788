"""The validation loss a run tracks: mean cross-entropy over fixed windows.

The windows are the same at every evaluation and at any world size (each rank scores
its share and the sums are reduced), so losses are comparable across a run, a resume
and a change of world size. The training RNG is never disturbed (dropout is off, and
the RNG is forked anyway), so evaluating does not change the weights' trajectory.
"""

from __future__ import annotations

import numpy as np
import torch

from lumenlm.devices import to_device
from lumenlm.train import distributed as D
from lumenlm.train.precision import autocast


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    windows: object,
    idx: np.ndarray,
    batch_size: int,
    precision: str,
    env: D.DistEnv,
) -> float:
    """Mean next-token cross-entropy over the windows `idx` of `windows` (all ranks)."""
    device = env.device
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # never disturb the training RNG
        for i in range(0, len(idx), batch_size):
            x, y = to_device(*windows.get_batch(idx[i : i + batch_size]), device)  # type: ignore[attr-defined]
            with autocast(precision, device):
                loss = model(x, y).loss
            total[0] += loss.double() * y.numel()
            total[1] += y.numel()
    D.all_reduce_sum(total, env)
    if hasattr(model, "reshard"):  # FSDP2 keeps the root unsharded after a no-grad forward
        model.reshard()
    model.train()
    return float(total[0] / total[1])
