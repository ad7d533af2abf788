"""Continuous batching vs the one-at-a-time server, side by side in one run.

C concurrent clients (default 32) each send one `/v1/completions` request for N tokens
(default 64; `ignore_eos`, temperature 0.8, seed = client number) to:

- **old**: the server as it was before continuous batching (`src/lumenlm/infer/server.py`
  at git commit `--old-commit`, extracted to a temporary directory at run time and
  served by uvicorn: one worker thread, one request at a time);
- **new**: `lumenlm serve --slots C` (the batch engine).

Both run as their own process on 127.0.0.1 with the same model directory, the same
torch thread count (`--server-threads`, default 1) and the same requests. Rounds
alternate old, new, old, new, ... (`--repeats` each), after one warm-up request per
server. Reported per server: aggregate completion tokens/s (all tokens / wall time of
the round), request latency p50/p99, and the new/old throughput ratio per round.

Models (random init: throughput does not depend on the weights): `librarian-1.3m`
(the preset, vocab 8000) and `d512` (Llama style, d_model 512, 8 layers, 8 heads,
context 256, vocab 8000), with a byte-level BPE trained here on toy text.

    .venv/bin/python benchmarks/bench_serve_batching.py [--models librarian-1.3m d512]
        [--clients 32] [--tokens 64] [--repeats 2] [--server-threads 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from revisions import source_at

HOST = "127.0.0.1"
OLD_COMMIT = "18c60f0"  # the last commit with the one-worker-thread server
WORDS = "the a cat dog sat on mat ran to house little girl boy tree sun moon happy".split()

OLD_LAUNCHER = """
import sys, importlib.util, socket, uvicorn
from lumenlm.modelio import load
spec = importlib.util.spec_from_file_location("old_server", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
model = load(sys.argv[2])
app = mod.create_app(model, model.tokenizer, model_name="m", max_tokens_cap=4096)
sock = socket.socket(); sock.bind(("127.0.0.1", 0))
print(f"serving on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
"""


def build_model(out: Path, which: str) -> Path:
    """A random model directory for `which` with a byte-level BPE trained on toy text."""
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
        vocab_size=8000,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tok_path = out / "tokenizer.json"
    tok.save(str(tok_path))
    if which == "librarian-1.3m":
        cfg = get_preset("librarian-1.3m").model
    elif which == "d512":
        cfg = get_preset("tiny").model.replace(
            vocab_size=8000,
            context_length=256,
            d_model=512,
            n_layers=8,
            n_heads=8,
            n_kv_heads=8,
            d_ff=1408,
        )
    else:
        raise SystemExit(f"unknown model {which!r}; use librarian-1.3m or d512")
    model_dir = out / which
    save_model(GPT(cfg).eval(), model_dir, tokenizer_path=tok_path)
    return model_dir


class Server:
    """A server process on 127.0.0.1; `url` once it prints "serving on URL"."""

    def __init__(self, cmd: list[str], threads: int) -> None:
        env = {k: v for k, v in os.environ.items() if k != "LUMENLM_API_KEY"}
        if threads > 0:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        found: list[str] = []

        def read() -> None:
            for line in self.proc.stderr:  # type: ignore[union-attr]
                m = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
                if m and not found:
                    found.append(m.group(1))
                elif not found:
                    sys.stderr.write(line)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 180
        while not found:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit(f"server did not start: {' '.join(cmd)}")
            time.sleep(0.1)
        self.url = found[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def round_of(url: str, clients: int, tokens: int, timeout: float) -> dict[str, Any]:
    """`clients` concurrent requests; aggregate tokens/s and latency percentiles."""
    import httpx

    async def one(client: httpx.AsyncClient, i: int) -> tuple[float, int]:
        body = {
            "prompt": f"Once upon a time {WORDS[i % len(WORDS)]}",
            "max_tokens": tokens,
            "temperature": 0.8,
            "seed": i,
            "ignore_eos": True,
        }
        t0 = time.perf_counter()
        r = await client.post(url + "/v1/completions", json=body)
        r.raise_for_status()
        return time.perf_counter() - t0, int(r.json()["usage"]["completion_tokens"])

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        start = time.perf_counter()
        got = await asyncio.gather(*(one(client, i) for i in range(clients)))
        wall = time.perf_counter() - start
    lat = sorted(x[0] for x in got)
    n = sum(x[1] for x in got)

    def pct(q: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1)

    return {
        "tokens": n,
        "wall_s": round(wall, 2),
        "tok_per_s": round(n / wall, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def bench_model(which: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    model_dir = build_model(tmp, which)
    old_src = source_at(args.old_commit, "src/lumenlm/infer/server.py")
    old_path = tmp / "old_server.py"
    old_path.write_text(old_src)
    launcher = tmp / "launch_old.py"
    launcher.write_text(OLD_LAUNCHER)
    py = sys.executable
    new_cmd = [
        py,
        "-m",
        "lumenlm",
        "serve",
        str(model_dir),
        "--host",
        HOST,
        "--port",
        "0",
        "--log-level",
        "warning",
        "--max-tokens-cap",
        "4096",
        "--no-ui",
        "--slots",
        str(args.clients),
        "--max-queue",
        str(4 * args.clients),
        "--no-verify",
        "--model-name",
        "m",
    ]
    servers = {
        "old": Server([py, str(launcher), str(old_path), str(model_dir)], args.server_threads),
        "new": Server(new_cmd, args.server_threads),
    }
    rounds: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    try:
        for s in servers.values():  # warm-up
            asyncio.run(round_of(s.url, 1, 4, args.timeout))
        for _ in range(args.repeats):
            for name in ("old", "new"):
                r = asyncio.run(
                    round_of(servers[name].url, args.clients, args.tokens, args.timeout)
                )
                rounds[name].append(r)
                print(f"{which} {name}: {r}", file=sys.stderr)
    finally:
        for s in servers.values():
            s.stop()
    ratios = [n["tok_per_s"] / o["tok_per_s"] for o, n in zip(rounds["old"], rounds["new"])]
    return {"model": which, "rounds": rounds, "speedup_per_round": [round(x, 2) for x in ratios]}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=["librarian-1.3m", "d512"])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--server-threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--old-commit", default=OLD_COMMIT)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if min(args.clients, args.tokens, args.repeats) < 1:
        ap.error("--clients, --tokens and --repeats must be >= 1")
    results = []
    for which in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(bench_model(which, args, Path(tmp)))
    meta = {
        "cpu": f"{cpu_name()}, {os.cpu_count()} logical cores",
        "clients": args.clients,
        "tokens": args.tokens,
        "server_threads": args.server_threads,
    }
    if args.json:
        print(json.dumps({**meta, "results": results}))
        return
    print(f"{meta}")
    for res in results:
        for name in ("old", "new"):
            rs = res["rounds"][name]
            print(
                f"{res['model']:>15} {name}: tok/s {[r['tok_per_s'] for r in rs]}  "
                f"p50 ms {[r['p50_ms'] for r in rs]}  p99 ms {[r['p99_ms'] for r in rs]}"
            )
        print(f"{res['model']:>15} new/old: {res['speedup_per_round']}")


if __name__ == "__main__":
    main()
