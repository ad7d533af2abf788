"""`lumenlm generate MODEL --prompt TEXT`: sample text from a model.

Also home of the sampling flags and model loading shared by `chat` and `serve`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, get_args

from lumenlm.cli.common import add_command, add_model_argument
from lumenlm.config import Dtype


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 64) -> None:
    """The sampling flags every inference command takes."""
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--max-new-tokens",
        "--max-tokens",
        type=int,
        default=max_new_tokens,
        dest="max_new_tokens",
        help=f"tokens to generate (default {max_new_tokens})",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="softmax temperature; 0 = greedy (default 0.8)",
    )
    g.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens")
    g.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="nucleus: keep the top tokens whose probability adds up to p (default 1 = off)",
    )
    g.add_argument(
        "--min-p",
        type=float,
        default=0.0,
        help="keep tokens with prob >= min_p * top prob (default 0 = off)",
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="CTRL/HF penalty for tokens already present (default 1 = off)",
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
        help="stop at this token id (repeatable)",
    )
    g.add_argument("--ignore-eos", action="store_true", help="keep going past <|endoftext|>")


DTYPE_CHOICES = get_args(Dtype)


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=DTYPE_CHOICES,
        help="weights and activations: fp32 (default, exact), bf16 (half the memory; fast "
        "on GPUs and AMX CPUs), fp16 (GPUs)",
    )


def torch_dtype(name: str) -> Any:
    """The torch dtype for a `--dtype` choice."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def add_model_args(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_dtype_arg(p)


def params_from_args(args: argparse.Namespace) -> Any:
    """SamplingParams from the flags of `add_sampling_args`."""
    from lumenlm.errors import ConfigError
    from lumenlm.infer import SamplingParams

    try:
        return SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=0.0 if args.greedy else args.temperature,
            top_k=args.top_k or None,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
            stop=tuple(unescape(s) for s in args.stop),
            stop_token_ids=tuple(args.stop_token_id),
            ignore_eos=args.ignore_eos,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def unescape(text: str) -> str:
    r"""Turn the two-character sequences \n, \t, \\ typed on a shell into characters."""
    return text.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\")


def load_model(path: str, device: str = "cpu", dtype: str = "fp32") -> Any:
    """`lumenlm.modelio.load` + a one-line error when the model has no tokenizer."""
    from lumenlm.devices import resolve_device
    from lumenlm.errors import CheckpointError
    from lumenlm.modelio import load

    model = load(path, device=resolve_device(device), dtype=torch_dtype(dtype))
    if model.tokenizer is None:
        raise CheckpointError(
            f"{path}: the model directory has no tokenizer.json; text generation needs one"
        )
    return model


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "generate",
        run,
        help="sample text from a model",
        description="Sample text from a model: temperature, top-k, top-p, min-p, repetition "
        "penalty, stop strings, batching, streaming. Prints prompt + completion.",
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
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole window every token (slow; for checking)",
    )
    add_sampling_args(p)


def run(args: argparse.Namespace) -> int:
    from lumenlm.errors import ConfigError, DataError
    from lumenlm.infer import generate, stream_generate

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.stream and args.json:
        raise ConfigError("--stream and --json do not go together")
    if args.prompt_file is not None:
        try:
            text = sys.stdin.read() if args.prompt_file == "-" else open(args.prompt_file).read()
        except OSError as exc:
            raise DataError(f"{args.prompt_file}: {exc.strerror}") from None
        prompts = [text]
    else:
        prompts = list(args.prompt)
    params = params_from_args(args)
    model = load_model(args.model, args.device, args.dtype)
    ids = _encode_noting_long_prompts(prompts, model)
    rows = [p for p in prompts for _ in range(args.num_samples)]
    row_ids = [i for i in ids for _ in range(args.num_samples)]  # tokenized once
    kw = {"tokenizer": model.tokenizer, "use_cache": not args.no_cache}
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
