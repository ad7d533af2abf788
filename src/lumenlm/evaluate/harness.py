"""lm-evaluation-harness in process on a lumenlm model, through its `LM` interface.

`lumenlm eval MODEL --harness TASKS` runs any lm-eval task a user has data for (MMLU,
PIQA, Winogrande, LAMBADA, wikitext, ...) with no export: `LumenHarnessLM` answers
lm-eval's three request types with lumenlm's own scoring, so its numbers are the ones
``--tasks`` gives for the tasks both know:

- ``loglikelihood(context, continuation)``: lm-eval's `_encode_pair` tokenization, the
  requests of one document grouped into one item (a shared context), and scored by
  `multiple_choice.score_encoded`, the batching behind ``--tasks arc-easy``. An empty
  context is the ``<|endoftext|>`` prefix token, as lm-eval's HF model does.
- ``loglikelihood_rolling(text)``: `rolling.rolling_loglikelihoods` (lm-eval's rolling
  windows, ``<|endoftext|>`` prefix), the scorer behind ``--tasks wikitext``.
- ``generate_until(context, gen_kwargs)``: `lumenlm.infer.generate` (KV cache, left-
  padded batches): greedy unless the task sets ``do_sample``, ``max_gen_toks`` new
  tokens (lm-eval's default 256), stopping at the ``until`` strings or
  ``<|endoftext|>``; the context keeps its last ``context_length - max_gen_toks``
  tokens, as lm-eval truncates it (at least one token; the decoder slides past the end).

lm-eval is an optional dependency (the ``harness`` extra); without it this module
raises a one-line error naming the install command.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lumenlm.errors import ConfigError, DataError, LumenError, first_line
from lumenlm.evaluate.multiple_choice import EncodedItem, encode_pair, score_encoded
from lumenlm.evaluate.rolling import rolling_loglikelihoods
from lumenlm.evaluate.tasks import MCItem
from lumenlm.model import GPT

INSTALL = "pip install 'lumenlm[harness]'"
PREFIX_TOKEN = "<|endoftext|>"

try:
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import LM
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
except ImportError:  # pragma: no cover - exercised by the missing-extra test via sys.modules
    raise LumenError(f"--harness needs lm-evaluation-harness: {INSTALL}") from None


class LumenHarnessLM(LM):
    """An lm-eval `LM` backed by a lumenlm `GPT` and its tokenizer (see module docstring)."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Any = None,  # tokenizers.Tokenizer; default: model.tokenizer
        batch_size: int = 16,
        max_gen_toks: int = 256,
        progress: bool | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or max_gen_toks < 1:
            raise ConfigError(
                f"batch_size and max_gen_toks must be >= 1, got {batch_size}, {max_gen_toks}"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        if self.tokenizer is None:
            raise ConfigError("the model has no tokenizer.json; harness tasks need one")
        prefix = self.tokenizer.token_to_id(PREFIX_TOKEN)
        if prefix is None:
            raise ConfigError(f"the tokenizer has no {PREFIX_TOKEN} token (the prefix token)")
        self.prefix_id: int = prefix
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self.progress = progress

    @property
    def max_length(self) -> int:
        return self.model.config.context_length

    def tok_encode(self, text: str) -> list[int]:
        """Ids without special tokens (what lm-eval's HF model gets from our export)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    # -- loglikelihood -----------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, whether greedy decoding gives it) per request."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        encoded: dict[int, tuple[list[int], list[int]]] = {}
        for i, req in enumerate(requests):
            context, continuation = req.args
            if context == "":
                ctx, cont = [self.prefix_id], self.tok_encode(continuation)
            else:
                ctx, cont = encode_pair(self.tok_encode, context, continuation)
            encoded[i] = (ctx, cont)
            # one item per document and context, as --tasks scores one question
            key = (req.task_name, req.doc_id, context)
            groups.setdefault(key, []).append(i)
        out: list[tuple[float, bool]] = [(0.0, True)] * len(requests)  # empty continuations
        items, members = [], []
        for key, idx in groups.items():
            idx = [i for i in idx if encoded[i][1]]
            if not idx:
                continue
            conts = [encoded[i][1] for i in idx]
            item = MCItem(str(key[1]), key[2], tuple(requests[i].args[1] for i in idx), 0)
            items.append(EncodedItem(item, encoded[idx[0]][0], conts))
            members.append(idx)
        scores = score_encoded(
            self.model, items, self.batch_size, True, self.progress, "harness loglikelihood"
        )
        for idx, item_scores in zip(members, scores):
            for i, (ll, greedy) in zip(idx, item_scores):
                out[i] = (float(ll), bool(greedy))
        return out

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """The whole string's log-likelihood, lm-eval's rolling windows, no truncation."""
        docs = [self.tok_encode(req.args[0]) for req in requests]
        return rolling_loglikelihoods(
            self.model,
            docs,
            self.prefix_id,
            self.batch_size,
            progress=self.progress,
            desc="harness rolling",
        )

    # -- generation ----------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Continuations of each context, cut at the first `until` string (not included)."""
        from lumenlm.infer.generate import generate

        eos = PREFIX_TOKEN
        by_kwargs: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_kwargs.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        for idx in by_kwargs.values():
            kwargs = normalize_gen_kwargs(dict(requests[idx[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = int(kwargs.pop("max_gen_toks"))
            keep = max(1, self.max_length - max_new)
            prompts = [
                self.tok_encode(requests[i].args[0])[-keep:] or [self.prefix_id] for i in idx
            ]
            sampling: dict[str, Any] = {"temperature": 0.0}
            if kwargs.get("do_sample") and float(kwargs.get("temperature") or 0.0) > 0.0:
                sampling = {"temperature": float(kwargs["temperature"]), "seed": 0}
                for name in ("top_p", "top_k"):
                    if kwargs.get(name) is not None:
                        sampling[name] = kwargs[name]
            results = generate(
                self.model,
                prompts,
                tokenizer=self.tokenizer,
                max_new_tokens=max_new,
                stop=[s for s in until if s and s != eos],
                batch_size=self.batch_size,
                **sampling,
            )
            for i, res in zip(idx, results):
                text = res.text
                for term in until:  # lm-eval's postprocess_generated_text
                    if term:
                        text = text.split(term)[0]
                out[i] = text
        return out


def lm_eval_version() -> str:
    """The installed lm-eval's version (for reports)."""
    from importlib.metadata import version

    return version("lm_eval")


def run_harness(
    model: GPT,
    tasks: Sequence[str],
    tokenizer: Any = None,
    include_path: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    log_samples: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on `model` for the named tasks; lm-eval's result dict.

    `include_path` is a folder of extra task YAMLs (lm-eval's ``--include_path``), the way
    to run a task on local files. Unknown task names and data that cannot be loaded (an
    offline machine and a hub dataset) are one-line errors.
    """
    if not tasks:
        raise ConfigError("no harness task given; name lm-eval tasks, e.g. --harness arc_easy")
    check_include_path(include_path)
    from lm_eval import simple_evaluate  # seconds: it imports datasets and transformers
    from lm_eval.tasks import TaskManager

    manager = None
    if include_path is not None:  # indexing lm-eval's thousands of built-in YAMLs takes
        # minutes on a small machine: skip it when the local folder has every task
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=str(include_path) if include_path else None)
    known = set(manager.all_tasks)
    missing = [t for t in tasks if t not in known]
    if missing:
        raise ConfigError(
            f"unknown harness task(s) {', '.join(missing)}; `lm-eval ls tasks` lists them, "
            "or give a folder with the task's YAML in --harness-include DIR"
        )
    lm = LumenHarnessLM(model, tokenizer, batch_size, progress=progress)
    try:
        return simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            num_fewshot=num_fewshot,
            log_samples=log_samples,
        )
    except (ConnectionError, FileNotFoundError) as exc:
        raise DataError(_data_hint(exc)) from None
    except Exception as exc:  # datasets' hub errors have no common base class
        if type(exc).__module__.split(".")[0] in ("datasets", "huggingface_hub", "requests"):
            raise DataError(_data_hint(exc)) from None
        raise


def check_include_path(include_path: str | Path | None) -> None:
    """A one-line error unless `include_path` is None or a folder (checked before loading)."""
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"--harness-include {include_path}: not a folder of task YAML files")


def _data_hint(exc: BaseException) -> str:
    return (
        f"a harness task's data could not be loaded ({first_line(exc)}); lm-eval reads "
        "datasets from the Hugging Face hub: run once online, or point a task YAML at "
        "local files (dataset_path: json, dataset_kwargs.data_files) in --harness-include DIR"
    )


def harness_summary(out: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of lm-eval's output for a report: results, versions, shots."""
    keep = {k: out[k] for k in ("results", "versions", "n-shot", "n-samples") if k in out}
    keep["lm_eval_version"] = lm_eval_version()
    return json.loads(json.dumps(keep, default=str))


def harness_table(out: dict[str, Any]) -> str:
    """lm-eval's own markdown results table."""
    from lm_eval.utils import make_table

    return make_table(out)
