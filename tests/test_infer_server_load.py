"""A quick loopback load test of `lumenlm serve` (benchmarks/bench_serve_load.py, small).

8 concurrent clients for 3 seconds against a tiny model on 127.0.0.1, plain and
streamed, and 64 clients for 60 s on 32 slots: every request must succeed and the
server answers /health afterwards. Slow (a server process per run):
`pytest -m slow tests/test_infer_server_load.py`. Timings are reported, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infer_helpers import make_model_dir, tok_path  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serve_load.py"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok_path: Path) -> Path:  # noqa: F811
    return make_model_dir(tmp_path_factory.mktemp("load"), "tiny-gpt2", tok_path)


@pytest.mark.parametrize("stream", [False, True])
def test_8_clients_3_seconds_no_errors(model_dir: Path, stream: bool) -> None:
    cmd = [sys.executable, str(BENCH), "--clients", "8", "--seconds", "3", "--max-tokens", "8"]
    cmd += ["--model", str(model_dir), "--json", *(["--stream"] if stream else [])]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(result)  # the numbers, for whoever runs -s
    assert result["requests"] >= 8 and result["errors"] == 0, result


def test_64_clients_60_seconds_no_errors(model_dir: Path) -> None:
    cmd = [sys.executable, str(BENCH), "--clients", "64", "--seconds", "60", "--max-tokens", "16"]
    cmd += ["--model", str(model_dir), "--json", "--stream", "--slots", "32"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(result)
    assert result["requests"] >= 64, result
    assert result["errors"] == 0, (result["error_kinds"], result["max_ms"])
    assert result["healthy_after"]
