"""`evaluate_tasks`: load each benchmark, score it, aggregate.

Multiple-choice tasks (ARC, HellaSwag) give a `TaskResult` (acc, acc_norm, stderr);
document-level perplexity tasks (``wikitext``) give a `PerplexityResult` (word and
byte perplexity, bits per byte). One call takes both kinds, in the order asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lumenlm.errors import ConfigError
from lumenlm.evaluate.multiple_choice import TaskResult, aggregate, score_items, tokenizer_encoder
from lumenlm.evaluate.taskfiles import load_task_with_source
from lumenlm.evaluate.tasks import get_task, is_perplexity_task, parse_task_list
from lumenlm.evaluate.wikitext import PerplexityResult, evaluate_wikitext
from lumenlm.model import GPT


def evaluate_tasks(
    model: GPT,
    tasks: Sequence[str],
    tokenizer: Any = None,  # tokenizers.Tokenizer; default: model.tokenizer
    tasks_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    shared: bool = True,
    download: bool = True,
    progress: bool | None = None,
) -> dict[str, TaskResult | PerplexityResult]:
    """Each task's result (first `limit` items or documents), keyed by canonical name."""
    for what, value in (("limit", limit), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{what} must be >= 1, got {value}; use a positive value")
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is None:
        raise ConfigError("the model has no tokenizer.json; benchmarks need one to encode text")
    encode = tokenizer_encoder(tokenizer)
    out: dict[str, TaskResult | PerplexityResult] = {}
    for name in parse_task_list(",".join(tasks)):
        if is_perplexity_task(name):
            out[name] = evaluate_wikitext(
                model, tokenizer, tasks_dir, "test", limit, batch_size, download, progress
            )
            continue
        spec = get_task(name)
        items, path = load_task_with_source(spec.name, tasks_dir, limit, download)
        results = score_items(model, encode, items, batch_size, shared, progress, desc=spec.name)
        result = aggregate(spec.name, results)
        result.source = str(path)
        out[spec.name] = result
    return out
