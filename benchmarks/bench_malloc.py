"""Minor page faults and wall time of a real `lumenlm train` with lumenlm's malloc tuning
(src/lumenlm/allocator.py) and with glibc's defaults (LUMENLM_MALLOC=system), alternating,
each run in its own process (mallopt is process-wide).

    .venv/bin/lumenlm prepare tinystories --vocab-size 8000 --out /tmp/ts
    .venv/bin/python benchmarks/bench_malloc.py --data /tmp/ts --steps 30 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LUMENLM = str(Path(sys.executable).with_name("lumenlm"))


def run(data: str, steps: int, mode: str, out: Path) -> dict:
    """One training run; its faults and time (children's rusage before and after)."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, LUMENLM_MALLOC="system" if mode == "system" else "")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    t0 = time.perf_counter()
    argv = [
        LUMENLM,
        "train",
        "--preset",
        "librarian-1.3m",
        "--data",
        data,
        "--out",
        str(out),
        "--stop-at-step",
        str(steps),
        "--no-progress",
        "--set",
        "eval_interval=100000",
    ]
    p = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(p.stderr[-2000:])
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before
    return {"mode": mode, "faults": faults, "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a prepared dataset (vocab 8000 for the card)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for r in range(args.rounds):
            for mode in ("system", "tuned") if r % 2 == 0 else ("tuned", "system"):
                rows.append(run(args.data, args.steps, mode, Path(tmp) / f"{mode}{r}"))
                print(json.dumps(rows[-1]), flush=True)
    for mode in ("system", "tuned"):
        mine = [x for x in rows if x["mode"] == mode]
        print(mode, "faults", [x["faults"] for x in mine], "seconds", [x["seconds"] for x in mine])


if __name__ == "__main__":
    main()
