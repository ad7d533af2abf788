"""Encoding throughput (MB/s of UTF-8 text) on the local TinyStories pieces.

Compares, in one run and on the same documents and tokenizer:
  plain-1t   `tokenizers` Tokenizer.encode_batch, single-threaded (TOKENIZERS_PARALLELISM=false)
  plain-mt   `tokenizers` Tokenizer.encode_batch, multi-threaded (its default)
  lumenlm-1t lumenlm.data.encode.encode_stream with one Rust thread (the pipeline's own overhead)
  lumenlm    lumenlm.data.encode.encode_stream: chunked encode_batch_fast on all cores, a worker
             thread overlapping with the caller, output as flat token arrays with EOT separators
  prepare    lumenlm prepare end to end, reusing the tokenizer: read + clean + split + encode +
             write .bin + hashes (everything but tokenizer training)
Ratios are against plain-1t. Run: python benchmarks/bench_tokenize.py [--repeat 3] [--source DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lumenlm.data import readers
from lumenlm.data.clean import CleanConfig, clean_text
from lumenlm.data.encode import encode_stream
from lumenlm.data.prepare import PrepareConfig, prepare_dataset
from lumenlm.data.tokenizer import eot_id, train_tokenizer


def find_source(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    for base in (
        os.environ.get("LUMENLM_DATA"),
        Path(__file__).resolve().parents[2] / "shared" / "data",
    ):
        if base and (Path(base) / "tinystories").is_dir():
            return Path(base) / "tinystories"
    raise SystemExit("no TinyStories pieces found: pass --source DIR or set LUMENLM_DATA")


def best_of(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="TinyStories folder (default: $LUMENLM_DATA/tinystories)")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument(
        "--repeat", type=int, default=2, help="encode the corpus this many times per round"
    )
    ap.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    args = ap.parse_args()

    src = find_source(args.source)
    cfg = CleanConfig()
    docs = []
    for path in sorted(src.glob("TinyStories*.txt")):
        reader = readers.blank_line_documents if ".hf-rows." in path.name else readers.eot_documents
        docs += [t for t in (clean_text(d, cfg) for d in reader(path)) if t]
    docs = docs * args.repeat
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    tok = train_tokenizer(docs[: len(docs) // args.repeat], vocab_size=args.vocab_size)
    eot = eot_id(tok)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"corpus: {src} ({len(docs)} documents, {mb:.1f} MB per round, "
        f"{os.cpu_count()} CPUs, load average {load}, vocab {tok.get_vocab_size()})"
    )

    def plain() -> None:
        tok.encode_batch(docs)

    def ours() -> None:
        for _ in encode_stream(tok, (("train", d) for d in docs), eot):
            pass

    work = Path(tempfile.mkdtemp(prefix="lumenlm-bench-"))
    tok.save(str(work / "tokenizer.json"))
    outs = iter(range(1000))
    file_mb = sum(p.stat().st_size for p in src.glob("TinyStories*.txt")) / 1e6

    def end_to_end() -> None:
        with contextlib.redirect_stderr(io.StringIO()):  # the partial-data notes
            prepare_dataset(
                PrepareConfig(
                    dataset="tinystories",
                    source=str(src),
                    out=work / f"out{next(outs)}",
                    tokenizer=str(work),
                    progress=False,
                )
            )

    # (name, TOKENIZERS_PARALLELISM, function, MB); rounds interleave the paths so a
    # change in machine load hits all of them alike; the best round of each is reported
    paths: list[tuple[str, str, Callable[[], object], float]] = [
        ("plain-1t", "false", plain, mb),
        ("lumenlm-1t", "false", ours, mb),
        ("plain-mt", "true", plain, mb),
        ("lumenlm", "true", ours, mb),
        ("prepare", "true", end_to_end, file_mb),
    ]
    best = {name: float("inf") for name, *_ in paths}
    try:
        for _ in range(args.rounds):
            for name, parallel, fn, _size in paths:
                os.environ["TOKENIZERS_PARALLELISM"] = parallel
                best[name] = min(best[name], best_of(fn, 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = [(name, best[name], size) for name, _p, _f, size in paths]

    print(
        f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "(parallel speedups need idle cores; compare runs on a quiet machine)"
    )
    base = results[0][2] / results[0][1]
    print(f"{'path':<10} {'seconds':>8} {'MB':>6} {'MB/s':>7} {'vs plain-1t':>12}")
    for name, seconds, size in results:
        rate = size / seconds
        print(f"{name:<10} {seconds:>8.3f} {size:>6.1f} {rate:>7.2f} {rate / base:>11.2f}x")


if __name__ == "__main__":
    main()
