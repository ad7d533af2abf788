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
    ignore_index: int = -100,
) -> float:
    """Mean next-token cross-entropy over the trained targets (not `ignore_index`) of the
    windows `idx` of `windows` (all ranks): a fine-tuning split's batches carry
    document ids and masked targets, so this is the assistant-token loss there."""
    device = env.device
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # never disturb the training RNG
        for i in range(0, len(idx), batch_size):
            batch = windows.get_batch(idx[i : i + batch_size])  # type: ignore[attr-defined]
            n = int((batch[1] != ignore_index).sum())
            if n == 0:
                continue
            x, y = to_device(batch[0], batch[1], device)
            doc = {"document_ids": batch[2].to(device)} if len(batch) > 2 else {}
            with autocast(precision, device):
                loss = model(x, y, return_logits=False, **doc).loss  # chunked loss
            total[0] += loss.double() * n
            total[1] += n
    D.all_reduce_sum(total, env)
    if hasattr(model, "reshard"):  # FSDP2 keeps the root unsharded after a no-grad forward
        model.reshard()
    model.train()
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")
