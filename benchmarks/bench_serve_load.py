"""Loopback load test of `lumenlm serve`: C concurrent clients for S seconds.

Starts `lumenlm serve` as its own process on 127.0.0.1 (any free port) with a tiny
model: `--model DIR`, else a randomly initialised `tiny-gpt2` with a 512-token BPE
trained here on toy text. Then C asyncio clients (httpx) send `/v1/completions`
requests back to back, each waiting for its answer, and the script reports
requests/s, latency p50 / p99 / max, completion tokens/s and errors (any status but
200, a malformed body or stream, a timeout or connection failure).

Bounded in count and time, and it stops by itself: no request starts after
`--seconds` or past `--max-requests`; each request has `--timeout`; the whole run
has a hard limit of seconds + timeout + 60; the server is then stopped (SIGTERM, then
SIGKILL). Only 127.0.0.1 is used. The server decodes up to `--slots` sequences in one
continuous batch (its default, or this script's `--slots`); the rest queue. The server
runs with `--server-threads` torch threads (default 1: a tiny model gains nothing from
more, and on a busy CPU extra threads wait on each other).

    .venv/bin/python benchmarks/bench_serve_load.py [--clients 64] [--seconds 60]
        [--max-requests 1000000] [--max-tokens 16] [--stream] [--model DIR]
        [--server-threads 1] [--slots N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
WORDS = "the a cat dog sat on mat ran to house little girl boy tree sun moon happy".split()


def build_tiny_model(out: Path) -> Path:
    """A random tiny-gpt2 model directory with a small byte-level BPE trained on toy text."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from lumenlm.model import GPT
    from lumenlm.modelio import save_model
    from lumenlm.presets import get_preset

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(2000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tok_path = out / "tokenizer.json"
    tok.save(str(tok_path))
    cfg = get_preset("tiny-gpt2").model.replace(vocab_size=512)
    model_dir = out / "tiny-gpt2"
    save_model(GPT(cfg).eval(), model_dir, tokenizer_path=tok_path)
    return model_dir


class Server:
    """`lumenlm serve MODEL` on 127.0.0.1, port 0; `url` once it prints its address."""

    def __init__(
        self, model_dir: Path, max_tokens: int, threads: int, extra: list[str] | None = None
    ) -> None:
        env = {k: v for k, v in os.environ.items() if k != "LUMENLM_API_KEY"}
        if threads > 0:  # torch's intra-op threads in the server process
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, "-m", "lumenlm", "serve", str(model_dir), "--host", HOST]
        cmd += ["--port", "0", "--log-level", "warning", "--max-tokens-cap", str(max_tokens)]
        cmd += extra or []
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        self.url = self._wait_for_address(timeout=180)
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()  # the pipe never fills

    def _wait_for_address(self, timeout: float) -> str:
        assert self.proc.stderr is not None
        found: list[str] = []

        def read() -> None:
            for line in self.proc.stderr:  # type: ignore[union-attr]
                m = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
                if m:
                    found.append(m.group(1))
                    return
                sys.stderr.write(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            raise SystemExit(f"the server did not start within {timeout:.0f} s")
        return found[0]

    def _drain(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.log.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_healthy(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                if (await client.get(url + "/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url}/health did not answer within {timeout:.0f} s")
            await asyncio.sleep(0.2)


async def one_request(client: Any, url: str, body: dict, stream: bool) -> tuple[bool, int, str]:
    """(ok, completion tokens, error kind) of one request."""
    import httpx

    try:
        if stream:
            async with client.stream("POST", url, json=body) as r:
                text = (await r.aread()).decode()
            if r.status_code != 200:
                return False, 0, f"http {r.status_code}"
            events = text.split("\n\n")
            if events[-2:] != ["data: [DONE]", ""] or '"error"' in text:
                return False, 0, "bad stream"
            usage = json.loads(events[-3].removeprefix("data: "))["usage"]  # include_usage
            return True, int(usage["completion_tokens"]), ""
        r = await client.post(url, json=body)
        if r.status_code != 200:
            return False, 0, f"http {r.status_code}"
        return True, int(r.json()["usage"]["completion_tokens"]), ""
    except httpx.TimeoutException:
        return False, 0, "timeout"
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return False, 0, type(exc).__name__


async def load(args: argparse.Namespace, base: str) -> dict[str, Any]:
    """Run the clients until the deadline or the request budget; the measurements."""
    import httpx

    url = base + "/v1/completions"
    latencies: list[float] = []
    errors: dict[str, int] = {}
    tokens = 0
    issued = 0
    start = time.perf_counter()
    deadline = start + args.seconds
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)

    async def client_loop(client: httpx.AsyncClient, c: int) -> None:
        nonlocal tokens, issued
        while time.perf_counter() < deadline and issued < args.max_requests:
            issued += 1
            body = {
                "prompt": "Once upon a time",
                "max_tokens": args.max_tokens,
                "temperature": 0.8,
                "seed": issued,
                "stream": args.stream,
                **({"stream_options": {"include_usage": True}} if args.stream else {}),
            }
            t0 = time.perf_counter()
            ok, n, why = await one_request(client, url, body, args.stream)
            latencies.append(time.perf_counter() - t0)
            tokens += n
            if not ok:
                errors[why] = errors.get(why, 0) + 1

    async with httpx.AsyncClient(limits=limits, timeout=args.timeout) as client:
        await asyncio.wait_for(
            asyncio.gather(*(client_loop(client, c) for c in range(args.clients))),
            timeout=args.seconds + args.timeout + 60,
        )
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    return {
        "clients": args.clients,
        "seconds": round(elapsed, 2),
        "requests": len(lat),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "requests_per_s": round(len(lat) / elapsed, 2),
        "p50_ms": round(pct(0.50), 1),
        "p99_ms": round(pct(0.99), 1),
        "max_ms": round(1000 * lat[-1], 1) if lat else None,
        "completion_tokens_per_s": round(tokens / elapsed, 1),
        "max_tokens": args.max_tokens,
        "stream": args.stream,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    ap.add_argument("--seconds", type=float, default=60, help="run time (default 60)")
    ap.add_argument(
        "--max-requests", type=int, default=1_000_000, help="request budget (default 1000000)"
    )
    ap.add_argument("--max-tokens", type=int, default=16, help="tokens per request (default 16)")
    ap.add_argument("--timeout", type=float, default=60, help="per-request timeout s (default 60)")
    ap.add_argument("--stream", action="store_true", help="stream the completions (SSE)")
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: a tiny one)")
    ap.add_argument(
        "--server-threads",
        type=int,
        default=1,
        help="torch threads in the server (OMP_NUM_THREADS; default 1, fastest for tiny "
        "models on a shared CPU; 0 = torch's default)",
    )
    ap.add_argument(
        "--slots", type=int, default=None, help="the server's --slots (default: its default)"
    )
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args()
    if args.clients < 1 or args.seconds <= 0 or args.max_requests < 1 or args.max_tokens < 1:
        ap.error("--clients, --seconds, --max-requests and --max-tokens must be positive")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_tiny_model(Path(tmp))
        extra = [] if args.slots is None else ["--slots", str(args.slots)]
        server = Server(model_dir, args.max_tokens, args.server_threads, extra)
        try:
            asyncio.run(wait_healthy(server.url))
            result = asyncio.run(load(args, server.url))
            asyncio.run(wait_healthy(server.url, timeout=10))  # still healthy after the load
            result["healthy_after"] = True
        finally:
            server.stop()
    result["cpu"] = f"{cpu_name()}, {os.cpu_count()} logical cores"
    result["model"] = str(args.model) if args.model else "tiny-gpt2 (random), vocab 512"
    result["server_threads"] = args.server_threads or "torch default"
    result["slots"] = args.slots
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['clients']} clients, {result['seconds']} s, max_tokens {args.max_tokens}"
        f"{' (stream)' if args.stream else ''}, {result['model']}, {result['cpu']}, "
        f"server threads {result['server_threads']}\n"
        f"requests {result['requests']}  errors {result['errors']} {result['error_kinds'] or ''}\n"
        f"requests/s {result['requests_per_s']}  p50 {result['p50_ms']} ms  "
        f"p99 {result['p99_ms']} ms  max {result['max_ms']} ms  "
        f"completion tokens/s {result['completion_tokens_per_s']}"
    )


if __name__ == "__main__":
    main()
