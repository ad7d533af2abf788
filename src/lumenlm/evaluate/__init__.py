"""Evaluation: language-model metrics on prepared splits and zero-shot benchmarks.

- `evaluate_lm(model, data_dir, split)`: loss, perplexity, bits-per-byte, top-1/5/10.
- `evaluate_tasks(model, ["arc-easy", ...])`: ARC-Easy, ARC-Challenge, HellaSwag,
  scored by log-likelihood exactly as EleutherAI lm-evaluation-harness does, and
  ``wikitext`` (`evaluate_wikitext`): lm-eval's word perplexity, byte perplexity and
  bits per byte on WikiText-2, document by document with rolling windows.
- `lumenlm.evaluate.harness` (optional extra, imported on demand): any
  lm-evaluation-harness task in process on a lumenlm model (`run_harness`).
"""

from __future__ import annotations

from lumenlm.evaluate.lm import LMResult, evaluate_lm, evaluate_tokens, window_spans
from lumenlm.evaluate.multiple_choice import (
    ItemResult,
    TaskResult,
    encode_pair,
    score_items,
    tokenizer_encoder,
)
from lumenlm.evaluate.rolling import rolling_loglikelihoods, rolling_spans
from lumenlm.evaluate.run import evaluate_tasks
from lumenlm.evaluate.taskfiles import load_task
from lumenlm.evaluate.tasks import (
    TASKS,
    MCItem,
    get_task,
    hellaswag_preprocess,
    load_arc,
    load_hellaswag,
    load_hellaswag_jsonl,
    load_hellaswag_text,
)
from lumenlm.evaluate.wikitext import PerplexityResult, evaluate_wikitext, wikitext_pages

__all__ = [
    "TASKS",
    "ItemResult",
    "LMResult",
    "MCItem",
    "PerplexityResult",
    "TaskResult",
    "encode_pair",
    "evaluate_lm",
    "evaluate_tasks",
    "evaluate_tokens",
    "evaluate_wikitext",
    "get_task",
    "hellaswag_preprocess",
    "load_arc",
    "load_hellaswag",
    "load_hellaswag_jsonl",
    "load_hellaswag_text",
    "load_task",
    "rolling_loglikelihoods",
    "rolling_spans",
    "score_items",
    "tokenizer_encoder",
    "wikitext_pages",
    "window_spans",
]
