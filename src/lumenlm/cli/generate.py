"""`lumenlm generate MODEL --prompt TEXT`: sample text from a model.

Also home of the sampling flags and model loading shared by `chat` and `serve`.

Every size is bounded, so no command line can grow memory without end: at most
`schema.MAX_N` samples per prompt (the server's cap on `n`), rows decoded
`--batch-size` at a time, and without `--stream` at most
`generate.MAX_UNSTREAMED_TOKENS` new tokens (nothing prints until the end). Sampling
values have the ranges `SamplingParams` checks. Text that is not UTF-8 (in a prompt
file, on stdin, in an argument) is read with undecodable bytes replaced by U+FFFD.
The limits' numbers reach `--help` through `LimitsHelp`, so the parser itself does
not import torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, get_args

from lumenlm.cli.common import add_command, add_model_argument, add_verify_argument
from lumenlm.config import Precision


class LimitsHelp(argparse.HelpFormatter):
    """Fills the limits' placeholders ({max_n}, ...) in help texts when help is shown."""

    def _expand_help(self, action: argparse.Action) -> str:
        return _fill_limits(super()._expand_help(action))

    def add_text(self, text: str | None) -> None:
        super().add_text(text if text is None else _fill_limits(text))


def _fill_limits(text: str) -> str:
    if "{" not in text:
        return text
    for name, value in _limits().items():
        text = text.replace("{" + name + "}", f"{value:g}")
    return text


def _limits() -> dict[str, float]:
    from lumenlm.infer.chat import MAX_LINE
    from lumenlm.infer.generate import MAX_BATCH, MAX_UNSTREAMED_TOKENS
    from lumenlm.infer.sampling import REPETITION_PENALTY_RANGE, TEMPERATURE_MAX
    from lumenlm.infer.schema import MAX_N

    return {
        "max_line": MAX_LINE,
        "max_n": MAX_N,
        "max_batch": MAX_BATCH,
        "max_unstreamed": MAX_UNSTREAMED_TOKENS,
        "max_temperature": TEMPERATURE_MAX,
        "min_penalty": REPETITION_PENALTY_RANGE[0],
        "max_penalty": REPETITION_PENALTY_RANGE[1],
    }


def add_sampling_args(
    p: argparse.ArgumentParser, max_new_tokens: int = 64, streamed: bool = True
) -> None:
    """The sampling flags every inference command takes (`streamed`: output always
    streams, so --max-new-tokens has no upper bound)."""
    g = p.add_argument_group("sampling")
    bound = "" if streamed else "; at most {max_unstreamed} without --stream"
    g.add_argument(
        "--max-new-tokens",
        "--max-tokens",
        type=int,
        default=max_new_tokens,
        dest="max_new_tokens",
        help=f"tokens to generate, >= 1 (default {max_new_tokens}{bound})",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="softmax temperature in [0, {max_temperature}]; 0 = greedy (default 0.8)",
    )
    g.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens")
    g.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="nucleus, in [0, 1]: keep the top tokens whose probability adds up to p "
        "(default 1 = off)",
    )
    g.add_argument(
        "--min-p",
        type=float,
        default=0.0,
        help="in [0, 1]: keep tokens with prob >= min_p * top prob (default 0 = off)",
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="CTRL/HF penalty for tokens already present, in [{min_penalty}, {max_penalty}] "
        "(default 1 = off)",
    )
    g.add_argument("--seed", type=int, default=None, help="random seed (reproducible output)")
    g.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop before this string (repeatable; \\n etc. are unescaped)",
    )
    g.add_argument(
        "--stop-token-id",
        action="append",
        type=int,
        default=[],
        metavar="ID",
        help="stop at this token id, one of the model's vocabulary (repeatable)",
    )
    g.add_argument("--ignore-eos", action="store_true", help="keep going past <|endoftext|>")


DTYPE_CHOICES = get_args(Precision)
"""The --dtype choices: the names of --precision (auto, fp32, bf16, fp16)."""


def add_dtype_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    exact = "fp32 (the default here: exact numbers), " if default == "fp32" else "fp32 (exact), "
    p.add_argument(
        "--dtype",
        default=default,
        choices=DTYPE_CHOICES,
        help=f"weights and activations: {exact}bf16 (half the memory; fast on GPUs and AMX "
        "CPUs, several times slower where the CPU emulates it), fp16 (GPUs), auto"
        f"{' (the default)' if default == 'auto' else ''}: bf16 only where the GPU or CPU "
        "has native bf16, the model's next-token probabilities stay within 0.05 of fp32's "
        "(total variation) and, on a CPU, a probe finds it faster, else fp32",
    )


def load_in_dtype(
    path: str,
    device: Any,
    dtype: str,
    verify: bool = True,
    check: Callable[[Any], None] | None = None,
    what: str = "lumenlm",
) -> Any:
    """`lumenlm.modelio.load` in `dtype` ("auto": loaded in fp32, then
    `lumenlm.infer.dtype.auto_dtype` decides, with one stderr line prefixed `what` where
    it probed). `check(model)` runs on the loaded model before any probe, so that a
    command's one-line error comes alone and before the probe's time."""
    from lumenlm.infer.dtype import DTYPES, auto_dtype
    from lumenlm.modelio import load

    model = load(path, device=device, dtype=DTYPES.get(dtype), verify=verify)
    if check is not None:
        check(model)
    return auto_dtype(model, what) if dtype == "auto" else model


def add_model_args(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_dtype_arg(p)
    add_verify_argument(p)


# SamplingParams' setting names -> (the flag, what to do), for one-line errors with advice
_FLAGS = {
    "temperature": ("--temperature", "use a value in that range (0 = greedy)"),
    "top_k": ("--top-k", "use 0 (off) or a positive number"),
    "top_p": ("--top-p", "use a value in that range (1 = off)"),
    "min_p": ("--min-p", "use a value in that range (0 = off)"),
    "repetition_penalty": ("--repetition-penalty", "use a value in that range (1 = off)"),
    "stop token id": ("--stop-token-id", "use an id of the model's vocabulary"),
    "stop strings": ("--stop strings", "drop the empty --stop"),
}


def params_from_args(args: argparse.Namespace, streamed: bool = True) -> Any:
    """SamplingParams from the flags of `add_sampling_args`; a ConfigError naming the
    flag for a value out of range (`streamed` as for `add_sampling_args`)."""
    from lumenlm.errors import ConfigError
    from lumenlm.infer import SamplingParams
    from lumenlm.infer.generate import MAX_UNSTREAMED_TOKENS
    from lumenlm.infer.text import replace_invalid

    if args.max_new_tokens < 1:
        raise ConfigError(
            f"--max-new-tokens must be >= 1, got {args.max_new_tokens}; give how many tokens "
            "to generate"
        )
    if not streamed and args.max_new_tokens > MAX_UNSTREAMED_TOKENS:
        raise ConfigError(
            f"--max-new-tokens {args.max_new_tokens} is over {MAX_UNSTREAMED_TOKENS}, the most "
            "that is generated before anything prints; add --stream to print tokens as they "
            "come (no limit then)"
        )
    try:
        return SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=0.0 if args.greedy else args.temperature,
            top_k=args.top_k or None,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
            stop=tuple(replace_invalid(unescape(s)) for s in args.stop),
            stop_token_ids=tuple(args.stop_token_id),
            ignore_eos=args.ignore_eos,
        )
    except ValueError as exc:
        raise ConfigError(_flag_message(str(exc))) from None


def _flag_message(message: str) -> str:
    """A SamplingParams message with the setting's name replaced by its flag, and advice."""
    for name, (flag, advice) in _FLAGS.items():
        if message.startswith(name):
            return f"{flag}{message[len(name) :]}; {advice}"
    return message


def check_vocab(params: Any, model: Any) -> None:
    """ConfigError when a --stop-token-id is not an id of `model`'s vocabulary."""
    from lumenlm.errors import ConfigError

    try:
        params.check_vocab(model.config.vocab_size)
    except ValueError as exc:
        raise ConfigError(_flag_message(exc.args[0])) from None


def unescape(text: str) -> str:
    r"""Turn the two-character sequences \n, \t, \\ typed on a shell into characters."""
    return text.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\")


def load_model(
    path: str,
    device: str = "cpu",
    dtype: str = "auto",
    verify: bool = True,
    check: Callable[[Any], None] | None = None,
    what: str = "lumenlm",
) -> Any:
    """`load_in_dtype` (checksums checked unless `verify` is False) + a one-line error
    when the model has no tokenizer; `check` and the tokenizer test run before `--dtype
    auto` probes."""
    from lumenlm.devices import resolve_device
    from lumenlm.errors import CheckpointError

    def checks(model: Any) -> None:
        if model.tokenizer is None:
            raise CheckpointError(
                f"{path}: the model directory has no tokenizer.json; text generation needs one"
            )
        if check is not None:
            check(model)

    return load_in_dtype(path, resolve_device(device), dtype, verify, checks, what)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "generate",
        run,
        help="sample text from a model",
        description="Sample text from a model: temperature, top-k, top-p, min-p, repetition "
        "penalty, stop strings, batching, streaming. Prints prompt + completion. Input that is "
        "not UTF-8 is read with undecodable bytes replaced by U+FFFD.",
        formatter_class=LimitsHelp,
    )
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="prompt text (repeat for a batch of prompts)",
    )
    src.add_argument(
        "--prompt-file", metavar="PATH", help="read the prompt from a file ('-' = stdin)"
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="samples per prompt, 1 to {max_n} (default 1)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows (prompts x samples) decoded together, 1 to {max_batch}; more rows run in "
        "batches of this size with the same output (default {max_n})",
    )
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole window every token (slow; for checking)",
    )
    add_sampling_args(p, streamed=False)


def run(args: argparse.Namespace) -> int:
    from lumenlm.errors import ConfigError
    from lumenlm.infer import generate, stream_generate
    from lumenlm.infer.generate import DEFAULT_BATCH, MAX_BATCH
    from lumenlm.infer.schema import MAX_N
    from lumenlm.infer.text import replace_invalid

    if not 1 <= args.num_samples <= MAX_N:
        raise ConfigError(
            f"--num-samples must be 1 to {MAX_N} (the server's cap on n), got "
            f"{args.num_samples}; for more, run the command again with other --seed values"
        )
    batch = DEFAULT_BATCH if args.batch_size is None else args.batch_size
    if not 1 <= batch <= MAX_BATCH:
        raise ConfigError(
            f"--batch-size must be 1 to {MAX_BATCH}, got {args.batch_size}; use a size in that "
            f"range, or leave it out for {DEFAULT_BATCH}"
        )
    if args.stream and args.json:
        raise ConfigError("--stream and --json do not go together; drop one of them")
    params = params_from_args(args, streamed=args.stream)
    if args.prompt_file is not None:
        prompts = [_read_prompt_file(args.prompt_file)]
    else:
        prompts = [replace_invalid(p) for p in args.prompt]
    model = load_model(
        args.model, args.device, args.dtype, args.verify,
        check=lambda m: check_vocab(params, m), what="lumenlm generate",
    )  # fmt: skip
    _replace_unprintable_output()
    ids = _encode_noting_long_prompts(prompts, model)
    rows = [p for p in prompts for _ in range(args.num_samples)]
    row_ids = [i for i in ids for _ in range(args.num_samples)]  # tokenized once
    kw = {"tokenizer": model.tokenizer, "use_cache": not args.no_cache, "batch_size": batch}
    if args.stream:
        _stream(stream_generate(model, row_ids, params, **kw), rows)
        return 0
    results = generate(model, row_ids, params, **kw)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "prompt": rows[r.index],
                        "completion": r.text,
                        "finish_reason": r.finish_reason,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                    }
                    for r in results
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    print("\n---\n".join(rows[r.index] + r.text for r in results))
    return 0


def _read_prompt_file(path: str) -> str:
    """The prompt file's text ('-' = stdin), undecodable bytes as U+FFFD."""
    from lumenlm.errors import DataError

    try:
        if path == "-":
            raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else None
            return sys.stdin.read() if raw is None else raw.decode("utf-8", "replace")
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}; check the --prompt-file path") from None


def _replace_unprintable_output() -> None:
    """On a terminal that cannot show a character (a non-UTF-8 locale), print '?'."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")


def _encode_noting_long_prompts(prompts: list[str], model: Any) -> list[list[int]]:
    """Token ids of each prompt; says so when one is longer than the context (the model
    sees only its end)."""
    from lumenlm.infer.generate import encode_prompts

    ctx = model.config.context_length
    encoded = encode_prompts(prompts, model.tokenizer, model.config.vocab_size)
    for i, ids in enumerate(encoded):
        if len(ids) > ctx:
            print(
                f"notice: prompt {i + 1} has {len(ids)} tokens; the model sees only its last "
                f"{ctx} (its context length)",
                file=sys.stderr,
            )
    return encoded


def _stream(events: Any, rows: list[str]) -> None:
    """Print row 0 live, then each next row (buffered meanwhile) in order."""
    buffers: list[list[str]] = [[] for _ in rows]
    finished = [False] * len(rows)
    current = 0
    out = sys.stdout
    out.write(rows[0])
    out.flush()
    for ev in events:
        if ev.index == current:
            out.write(ev.text)
            out.flush()
        else:
            buffers[ev.index].append(ev.text)
        if ev.finish_reason is not None:
            finished[ev.index] = True
        while current < len(rows) and finished[current]:
            current += 1
            if current < len(rows):
                out.write("\n---\n" + rows[current] + "".join(buffers[current]))
                out.flush()
    out.write("\n")
