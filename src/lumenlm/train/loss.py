"""Gradient accumulation normalised by trained tokens, not by micro-batches.

An optimizer step's loss is the mean cross-entropy over every trained target of the
step: the sum of per-token losses over all micro-batches and all data-parallel ranks,
divided by their total count N. Averaging per-micro-batch means instead (what
`transformers` did until its 2024 fix, huggingface/transformers#34191) weighs a token
of a micro-batch with few trained targets more than one of a full micro-batch, so the
gradient depends on how the step is cut into micro-batches. With loss masks (fine-tuning
trains on assistant tokens only) the counts differ a lot between micro-batches.

Micro-batch m of this rank contributes `mean_m * n_m * W / N` (W ranks): DDP and FSDP2
average gradients over ranks, so the W cancels and the step's gradient is that of
`sum / N`. The count N is summed over ranks first (one all-reduce of one integer per
step, on the host's counts: no device sync). The factor is applied as a division by
`N / (n_m * W)`; in pretraining every target is trained, that is exactly `grad_accum`,
so the numbers are bit for bit those of the plain `loss / grad_accum`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lumenlm.devices import to_device
from lumenlm.train import distributed as D
from lumenlm.train.precision import autocast

Batch = Sequence[torch.Tensor]
"""(inputs, targets) or (inputs, targets, document_ids), on the host."""


def trained_count(targets: torch.Tensor, ignore_index: int) -> int:
    """How many targets the loss counts."""
    return int((targets != ignore_index).sum())


def global_count(batches: Sequence[Batch], ignore_index: int, env: D.DistEnv) -> int:
    """Trained targets over all micro-batches of the step, summed over ranks."""
    n = sum(trained_count(b[1], ignore_index) for b in batches)
    if not env.enabled:
        return n
    total = torch.tensor([n], dtype=torch.int64, device=env.device)
    return int(D.all_reduce_sum(total, env).item())


def accumulate(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    *,
    env: D.DistEnv,
    precision: str,
    strategy: str,
    ignore_index: int,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """Forward and backward every micro-batch of one optimizer step; returns this rank's
    share of the step's loss (`sum / N` over its tokens, times W), detached: its mean
    over ranks is the step's loss. Gradients are those of `sum / N` after DDP's average.
    """
    device = env.device
    total = global_count(batches, ignore_index, env)
    loss_sum = torch.zeros((), device=device)
    last = len(batches) - 1
    for m, batch in enumerate(batches):
        n_m = trained_count(batch[1], ignore_index)
        x, y = to_device(batch[0], batch[1], device)
        doc = batch[2].to(device) if len(batch) > 2 else None
        with D.grad_sync(model, strategy, sync=m == last):
            with autocast(precision, device):
                # the loss alone: the chunked linear + cross-entropy, no full logits
                extra = {"document_ids": doc} if doc is not None else {}
                out = model(x, y, return_logits=False, **extra)
            if n_m == 0 or total == 0:  # nothing trained here: a zero that still backpropagates
                loss = (out.loss if out.logits is None else out.logits.float().sum()) * 0.0
            else:
                loss = out.loss / (total / (n_m * env.world_size))
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        loss_sum += loss.detach()
    return loss_sum
