"""Whole-document log-likelihood with rolling windows, as lm-evaluation-harness scores it.

lm-eval's `loglikelihood_rolling` (``lm_eval.utils.get_rolling_token_windows`` with
``context_len=1``, then ``make_disjoint_window``) scores a document of N tokens as the
stream ``[prefix] + tokens`` (the prefix is the BOS/EOS token, ``<|endoftext|>`` here,
so the first token has something to condition on), cut into windows of at most
L = the model's context length:

- the first window reads ``stream[0 : min(L, N)]`` and scores every one of its targets;
- every later window is a full window of L inputs that *ends* at the last token still
  to predict, ``stream[end - L : end]``, and scores only the (at most L) targets no
  earlier window scored.

So every token is predicted exactly once and the last window keeps a full L of context
(unlike `lumenlm.evaluate.lm.window_spans`, whose last window is short). The sum of
log-probabilities over all windows is the document's log-likelihood: wikitext's word
perplexity, byte perplexity and bits per byte all derive from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lumenlm.errors import ConfigError, LumenError
from lumenlm.model import GPT
from lumenlm.model.chunked_loss import linear_token_scores

Span = tuple[int, int, int]  # (begin, end, first scored offset) over [prefix] + tokens


def rolling_spans(n_tokens: int, max_length: int) -> list[Span]:
    """lm-eval's rolling windows over ``[prefix] + tokens`` (n_tokens + 1 ids).

    Each span ``(begin, end, first)`` means inputs ``stream[begin:end]``, targets
    ``stream[begin + 1 : end + 1]``, of which those at offsets >= `first` are scored.
    An empty document has no windows (lm-eval yields none and scores it 0.0).
    """
    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    if n_tokens <= 0:
        return []
    first_len = min(max_length, n_tokens)
    spans = [(0, first_len, 0)]
    predicted = first_len
    while predicted < n_tokens:
        n_pred = min(n_tokens - predicted, max_length)
        end = predicted + n_pred  # targets stream[end - L + 1 : end + 1] = tokens[end - L : end]
        spans.append((end - max_length, end, max_length - n_pred))
        predicted = end
    return spans


@torch.no_grad()
def rolling_loglikelihoods(
    model: GPT,
    documents: Sequence[Sequence[int]],
    prefix_id: int,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool | None = None,
    desc: str = "rolling",
) -> list[float]:
    """The log-likelihood (natural log, summed over tokens) of each token list.

    Windows of all documents are batched together (right-padded: causal attention makes
    the padding invisible to real positions); the vocabulary projection runs one chunk
    of scored positions at a time (`linear_token_scores`: the full logits never exist),
    each token's NLL in float32, the sums in float64. A non-finite sum is an error,
    never a number.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}; use a positive batch size")
    max_length = max_length or model.config.context_length
    if max_length > model.config.context_length:
        raise ConfigError(
            f"window {max_length} > the model's context length {model.config.context_length}"
        )
    streams = [[int(prefix_id), *map(int, doc)] for doc in documents]
    windows = [
        (d, span) for d, s in enumerate(streams) for span in rolling_spans(len(s) - 1, max_length)
    ]
    device = model.tok_emb.weight.device
    totals = [0.0] * len(streams)
    disable = None if progress is None else not progress
    with tqdm(total=len(windows), desc=desc, unit="win", disable=disable, leave=False) as bar:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            width = max(end - begin for _, (begin, end, _) in batch)
            x = torch.zeros(len(batch), width, dtype=torch.long)
            for row, (d, (begin, end, _)) in enumerate(batch):
                x[row, : end - begin] = torch.tensor(streams[d][begin:end])
            h = model(x.to(device), return_logits=False).final_hidden
            assert h is not None  # return_logits=False without targets always sets it
            picked, targets, owner = [], [], []
            for row, (d, (begin, end, first)) in enumerate(batch):
                picked.append(h[row, first : end - begin])
                targets.extend(streams[d][begin + 1 + first : end + 1])
                owner.extend([row] * (end - begin - first))
            nll, _ = linear_token_scores(
                torch.cat(picked),
                model.lm_head.weight,
                model.lm_head.bias,
                torch.tensor(targets, device=device),
            )
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
            sums.index_add_(0, torch.tensor(owner, device=device), nll.double())
            values = (-sums).tolist()  # one host sync per batch
            for (d, _), value in zip(batch, values):
                if not math.isfinite(value):
                    raise LumenError(
                        f"document {d}: the log-likelihood is {value}: the model gives "
                        "non-finite logits; check the checkpoint (corrupt weights?) or "
                        "evaluate with --dtype fp32"
                    )
                totals[d] += value
            bar.update(len(batch))
    return totals
