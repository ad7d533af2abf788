"""Language-model metrics over a token stream: cross-entropy, perplexity, bits-per-byte,
top-1/5/10 next-token accuracy.

Windows: a window of W tokens is the model's input ``tokens[b : b + W]`` with targets
``tokens[b + 1 : b + W + 1]``. Windows start every `stride` tokens. The first window
scores all its targets; each later window scores only targets not scored before (its
last `stride` when full), so every token after the first is scored exactly once
(N - 1 targets for N tokens) and, with stride < W, with at least W - stride tokens of
context: the Hugging Face "perplexity of fixed-length models" scheme. stride == W (the
default) is non-overlapping windows; the last window may be shorter.

perplexity = exp(mean token NLL); bits_per_byte = total NLL / (ln 2 * bytes), where
bytes = scored content tokens * the split's UTF-8 bytes per token from `meta.json`
(nanochat's vocabulary-independent measure; `<|endoftext|>` targets carry no bytes and
are left out of both sums). A meta.json without byte counts (an older `prepare`) gets
them by decoding the split with the model's tokenizer, so every evaluation reports it.

Two guards keep the numbers honest: a split prepared with a tokenizer other than the
model's (same size, other ids: the metrics would be plausible and meaningless) is
refused by fingerprint, the sha256 of tokenizer.json on both sides; and a non-finite
loss (nan/inf logits: corrupt weights, an overflowing dtype) is an error, never a number.

The full (tokens, V) logits never exist: the model returns its final hidden states and
the vocabulary projection runs one chunk of rows at a time (`model.chunked_loss.
linear_token_scores`), keeping per token only the NLL (fp32) and the target's rank (how
many logits are strictly greater than the target's; top-k accuracy is rank < k, so a
target tied for k-th place counts as a hit). That equals top-k membership wherever the
logits have no ties, and costs one comparison pass instead of a top-k per row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumenlm.data.download import sha256_file
from lumenlm.data.tokens import check_ids, load_split, read_meta
from lumenlm.errors import ConfigError, DataError, LumenError
from lumenlm.model import GPT
from lumenlm.model.chunked_loss import linear_token_scores, token_scores
from lumenlm.modelio import TOKENIZER_NAME, tokenizer_fingerprint

TOPK = (1, 5, 10)
CONVENTION = (
    "window W tokens predict the next W; windows every `stride` tokens; each target "
    "scored once, by the first window that contains it (HF fixed-length perplexity)"
)


@dataclass
class LMResult:
    """Metrics of one pass over a token stream, with how they were computed."""

    loss: float
    perplexity: float
    bits_per_byte: float | None
    top1: float
    top5: float
    top10: float
    tokens: int  # scored targets
    content_tokens: int  # scored targets that are not <|endoftext|> (the bits-per-byte base)
    window: int
    stride: int
    windows: int
    nll_sum: float
    bytes: float | None
    bytes_per_token: float | None
    split: str | None = None
    convention: str = CONVENTION

    def to_dict(self) -> dict:
        return asdict(self)


def window_spans(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) per window: inputs tokens[begin:end], targets
    tokens[begin+1:end+1], of which those at offsets >= first_scored are scored."""
    if window < 1 or stride < 1:
        raise ConfigError(f"window and stride must be >= 1 (got {window}, {stride})")
    if stride > window:
        raise ConfigError(f"stride {stride} > window {window} would skip tokens")
    n_targets = n_tokens - 1
    spans = []
    scored_to = 0  # targets [0, scored_to) are done; target j predicts token j + 1
    for begin in range(0, max(n_targets, 0), stride):
        end = min(begin + window, n_targets)
        spans.append((begin, end, scored_to - begin))
        scored_to = end
        if end == n_targets:
            break
    return spans


@torch.no_grad()
def evaluate_tokens(
    model: GPT,
    tokens: np.ndarray | torch.Tensor,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    bytes_per_token: float | None = None,
    progress: bool | None = None,
    split: str | None = None,
    eot_id: int | None = None,
) -> LMResult:
    """Score a flat token stream; see the module docstring for the window scheme.

    loss/perplexity/top-k cover every scored target. bits_per_byte covers the content
    targets only: targets equal to `eot_id` (document separators) have no bytes in the
    text, so their NLL is left out of it too, as nanochat does.
    """
    from tqdm import tqdm

    window = window or model.config.context_length
    stride = stride or window
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}; use a positive batch size")
    if window > model.config.context_length:
        raise ConfigError(
            f"window {window} > the model's context length {model.config.context_length}; "
            "use a smaller --window"
        )
    data = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if data.numel() < 2:
        raise DataError(f"need at least 2 tokens to score, got {data.numel()}")
    spans = window_spans(int(data.numel()), window, stride)
    device = model.tok_emb.weight.device
    nll_sum, n = 0.0, 0
    content_nll, n_content = 0.0, 0
    hits = dict.fromkeys(TOPK, 0)
    disable = None if progress is None else not progress
    with tqdm(total=len(spans), desc="lm eval", unit="win", disable=disable, leave=False) as bar:
        i = 0
        while i < len(spans):
            # a batch of equally long windows (only the last window can be shorter)
            length = spans[i][1] - spans[i][0]
            group = [spans[i]]
            while (
                len(group) < batch_size
                and i + len(group) < len(spans)
                and spans[i + len(group)][1] - spans[i + len(group)][0] == length
            ):
                group.append(spans[i + len(group)])
            x = torch.stack([data[b:e] for b, e, _ in group]).to(device)
            y = torch.stack([data[b + 1 : e + 1] for b, e, _ in group]).to(device)
            nll, rank, content = _score_batch(model, x, y, [f for _, _, f in group], eot_id)
            nll = nll.double()
            sums = torch.stack(
                [
                    nll.sum(),
                    torch.where(content, nll, 0.0).sum(),  # no boolean indexing: no sync
                    content.sum().double(),
                    *((rank < k).sum().double() for k in TOPK),
                ]
            )
            batch_nll, batch_content_nll, batch_content, *batch_hits = sums.tolist()  # 1 sync
            batch_n = sum(y.shape[1] - first for _, _, first in group)  # known on the host
            if not math.isfinite(batch_nll):
                raise LumenError(
                    f"the loss is {batch_nll} on tokens {group[0][0]}..{group[-1][1]}"
                    f"{f' of {split}' if split else ''}: the model gives non-finite logits; "
                    "check the checkpoint (corrupt weights?) or evaluate with --dtype fp32"
                )
            nll_sum += batch_nll
            content_nll += batch_content_nll
            n_content += int(batch_content)
            n += int(batch_n)
            for k, h in zip(TOPK, batch_hits):
                hits[k] += int(h)
            i += len(group)
            bar.update(len(group))
    mean = nll_sum / n
    total_bytes = n_content * bytes_per_token if bytes_per_token else None
    return LMResult(
        loss=mean,
        perplexity=math.exp(mean),
        bits_per_byte=content_nll / (math.log(2) * total_bytes) if total_bytes else None,
        top1=hits[1] / n,
        top5=hits[5] / n,
        top10=hits[10] / n,
        tokens=n,
        content_tokens=n_content,
        window=window,
        stride=stride,
        windows=len(spans),
        nll_sum=nll_sum,
        bytes=total_bytes,
        bytes_per_token=bytes_per_token,
        split=split,
    )


def _score_batch(
    model: GPT, x: torch.Tensor, y: torch.Tensor, firsts: list[int], eot_id: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NLL fp32, target rank, is-content) of the scored targets of a batch: row r's
    positions >= firsts[r], rows concatenated. A GPT gives its final hidden states and the
    vocabulary projection runs one chunk of rows at a time (`linear_token_scores`: one
    chunk of logits in memory, no top-k); any other model (wrappers, test doubles) is
    scored from the logits its forward returns, with the same per-token function."""

    def scored(t: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (scored targets, ...)
        return (
            t.flatten(0, 1)
            if not any(firsts)
            else torch.cat([t[r, f:] for r, f in enumerate(firsts)])
        )

    targets = scored(y)
    if isinstance(model, GPT):
        h = model(x, return_logits=False).final_hidden
        assert h is not None  # return_logits=False without targets always sets it
        nll, rank = linear_token_scores(
            scored(h), model.lm_head.weight, model.lm_head.bias, targets
        )
    else:
        nll, rank = token_scores(scored(model(x).logits), targets)
    content = (
        targets != eot_id if eot_id is not None else torch.ones_like(targets, dtype=torch.bool)
    )
    return nll, rank, content


# ----------------------------------------------------------------------------- prepared data


def split_bytes_per_token(meta: dict, split: str) -> float | None:
    """UTF-8 bytes per content token of `split` (``<|endoftext|>`` separators excluded, as
    `lumenlm prepare` stores it): the split's bytes / content tokens, else the stored
    per-split ratio, else the overall ratio. None when the metadata has none of these."""
    # Exact counts first: the stored ratio is rounded to 6 decimals.
    info = (meta.get("splits") or {}).get(split) or {}
    tokens = info.get("content_tokens") or info.get("tokens")
    if info.get("bytes") and tokens:
        return float(info["bytes"]) / float(tokens)
    bpt = meta.get("bytes_per_token")
    if isinstance(bpt, dict) and bpt.get(split):
        return float(bpt[split])
    if isinstance(bpt, (int, float)) and not isinstance(bpt, bool) and bpt > 0:
        return float(bpt)
    if isinstance(bpt, dict):
        value = bpt.get("all", bpt.get("overall"))
        return float(value) if value else None
    return None


def decoded_bytes_per_token(tokenizer: Any, tokens: np.ndarray, eot_id: int | None) -> float | None:
    """UTF-8 bytes per content token of `tokens`, by decoding them (``<|endoftext|>``
    left out, as `lumenlm prepare` counts): bits per byte for a split whose meta.json
    predates byte counts. Decoded in chunks; byte-level BPE loses nothing at the seams
    but a character split across two chunks, which costs at most a few bytes."""
    ids = np.asarray(tokens)
    if eot_id is not None:
        ids = ids[ids != eot_id]
    if ids.size == 0:
        return None
    chunk = 1 << 16
    n_bytes = sum(
        len(tokenizer.decode(ids[i : i + chunk].tolist()).encode("utf-8"))
        for i in range(0, ids.size, chunk)
    )
    return n_bytes / ids.size if n_bytes else None


def dataset_tokenizer_fingerprint(meta: dict, data_dir: Path) -> str | None:
    """sha256 of the tokenizer a prepared dataset was encoded with: meta.json's record,
    else its tokenizer.json's digest, else None."""
    tok = meta.get("tokenizer")
    if isinstance(tok, dict) and isinstance(tok.get("sha256"), str):
        return tok["sha256"]
    path = data_dir / TOKENIZER_NAME
    return sha256_file(path) if path.is_file() else None


def check_same_tokenizer(model: GPT, meta: dict, data_dir: Path) -> None:
    """Refuse a split encoded with another tokenizer than the model's (one-line DataError).

    Compared by fingerprint; with either side unknown (a model or dataset from before
    fingerprints, no tokenizer.json) there is nothing to compare. Two files that differ
    only in formatting (same tokenizer, serialized differently) are the same tokenizer.
    """
    ours = tokenizer_fingerprint(model)
    theirs = dataset_tokenizer_fingerprint(meta, data_dir)
    if ours is None or theirs is None or ours == theirs:
        return
    if _same_content(model.model_dir, data_dir):
        return
    raise DataError(
        f"{data_dir}: encoded with another tokenizer than the model's (tokenizer sha256 "
        f"{theirs[:12]}... vs the model's {ours[:12]}...), so its numbers would mean nothing; "
        "evaluate on data prepared with the model's tokenizer (lumenlm prepare --tokenizer "
        "MODEL_DIR) or pass --allow-tokenizer-mismatch"
    )


def _same_content(model_dir: Path | None, data_dir: Path) -> bool:
    """Whether both tokenizer.json files exist and hold the same tokenizer."""
    if model_dir is None:
        return False
    a, b = model_dir / TOKENIZER_NAME, data_dir / TOKENIZER_NAME
    if not (a.is_file() and b.is_file()):
        return False
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(a)).to_str() == Tokenizer.from_file(str(b)).to_str()
    except Exception:  # tokenizers raises plain Exception on a bad file
        return False


def evaluate_lm(
    model: GPT,
    data_dir: str | Path,
    split: str = "val",
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool | None = None,
    allow_tokenizer_mismatch: bool = False,
) -> LMResult:
    """Loss, perplexity, bits-per-byte and top-k accuracy on a prepared split.

    `max_tokens` scores only the first tokens of the split (quick looks). A split whose
    tokenizer is not the model's is refused unless `allow_tokenizer_mismatch`.
    """
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    meta = read_meta(data_dir)
    if not allow_tokenizer_mismatch:
        check_same_tokenizer(model, meta, Path(data_dir))
    vocab = meta.get("vocab_size")
    if vocab and int(vocab) > model.config.vocab_size:
        raise DataError(
            f"{data_dir}: vocab_size {vocab} > the model's {model.config.vocab_size}; "
            "was it prepared with another tokenizer?"
        )
    tokens = load_split(data_dir, split)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    vocab = min(model.config.vocab_size, int(meta["vocab_size"]))  # ids valid for both
    check_ids(tokens, vocab, f"{Path(data_dir) / split}.bin")
    eot = meta.get("eot_id")
    bpt = split_bytes_per_token(meta, split)
    if bpt is None and model.tokenizer is not None:  # older meta.json: count the bytes
        bpt = decoded_bytes_per_token(
            model.tokenizer, tokens, int(eot) if eot is not None else None
        )
    return evaluate_tokens(
        model,
        tokens,
        window,
        stride,
        batch_size,
        bpt,
        progress,
        split,
        int(eot) if eot is not None else None,
    )
