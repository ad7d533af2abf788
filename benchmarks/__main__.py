"""`python -m benchmarks`: lumenlm against HF transformers (and nanoGPT) in one run.

For each preset it times, with the same weights and the same tokens on every side:
a training step end to end (and again at the preset's dropout rate, each toolkit with
its own dropout code, where the peer's model drops the same things), evaluation,
prefill and greedy decoding at batch 1 and 8, in two settings: (a) each toolkit as its user gets it by default, (b) equal settings
(see benchmarks/toolkits.py for exactly what each means). Each (toolkit, setting,
preset) measurement runs in a worker process of its own (benchmarks/worker.py), and
the rounds interleave them, so a slow spell of a shared host hits every side. The
same run times large matmuls for the CPU's FLOP/s roof (CPU MFU), and checks that the
toolkits computed the same thing (first-step loss, eval loss, greedy ids).

    python -m benchmarks                                   # the three seed presets
    python -m benchmarks --nanogpt ../nanoGPT/model.py --write-results
    python -m benchmarks --quick --presets tiny-gpt2       # a smoke run in seconds

Results print as Markdown; `--write-results` replaces the section between
`<!-- bench:start -->` and `<!-- bench:end -->` of benchmarks/RESULTS.md in place,
and `--out FILE` writes every raw timing as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import report
import toolkits
from lumenlm import mkl_shim
from shapes import suite_shape

ROOT = Path(__file__).resolve().parents[1]
SEED_PRESETS = ("librarian-1.3m", "lumiere-1m", "lumenbase-128m")
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--presets", default=",".join(SEED_PRESETS), help="comma-separated preset names"
    )
    ap.add_argument(
        "--settings", default="default,equal", help="default, equal, or both (comma-separated)"
    )
    ap.add_argument("--nanogpt", metavar="PATH", help="nanoGPT's model.py (read at run time)")
    ap.add_argument("--compile", action="store_true", help="torch.compile every toolkit in (b)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in every worker (default: lumenlm's choice: "
                         "LUMENLM_THREADS, OMP_NUM_THREADS, else the usable cores)")  # fmt: skip
    ap.add_argument("--equal-precision", choices=["fp32", "bf16", "fp16"], default=None,
                    help="the precision of (b) (default: fp32 on CPU, bf16 on CUDA)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3)")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per task and round (3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before each task")
    ap.add_argument("--train-warmup", type=int, default=1,
                    help="untimed training steps after the first (which is timed apart)")  # fmt: skip
    ap.add_argument("--min-s", type=float, default=None,
                    help="repeat a call within one timing until it has run this long (0.2 s)")  # fmt: skip
    ap.add_argument("--peak-size", type=int, default=None, help="matmul size for the peak (2048)")
    ap.add_argument("--peak-repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes, one round, one call: checks the code paths, measures nothing")  # fmt: skip
    ap.add_argument("--worker-timeout", type=float, default=1800.0, help="seconds per worker")
    ap.add_argument(
        "--out", metavar="FILE", help="write all raw results as JSON (after each worker)"
    )
    ap.add_argument("--render", metavar="FILE",
                    help="measure nothing: render the --out FILE of an earlier run")  # fmt: skip
    ap.add_argument("--write-results", nargs="?", const=str(RESULTS_MD), metavar="MD",
                    help=f"replace the section in MD (default {RESULTS_MD.relative_to(ROOT)})")  # fmt: skip
    args = ap.parse_args(argv)
    q = args.quick
    args.repeats = args.repeats or (1 if q else 3)
    args.iters = args.iters or (1 if q else 3)
    args.min_s = args.min_s if args.min_s is not None else (0.0 if q else 0.2)
    args.peak_size = args.peak_size or (256 if q else 2048)
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in args.settings:
        if s not in toolkits.SETTINGS:
            ap.error(f"--settings: unknown setting {s!r}; use default, equal or both")
    if min(args.repeats, args.iters) < 1:
        ap.error("--repeats and --iters must be >= 1")
    if args.nanogpt and not Path(args.nanogpt).is_file():
        ap.error(f"--nanogpt {args.nanogpt}: no such file; pass the path of nanoGPT's model.py")
    return args


def hardware(device: Any) -> dict[str, Any]:
    """What the figures were measured on: CPU model and flags, cores, native bf16, GPU."""
    import torch

    from lumenlm.devices import cpu_bf16_native, cpu_info, usable_cpu_cores

    name, flags = cpu_info()
    return {
        "cpu": name or platform.processor() or "unknown CPU",
        "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
        "usable_cores": usable_cpu_cores(),
        "cpu_count": os.cpu_count(),
        "bf16_native": cpu_bf16_native(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def prepare(presets: list[str], root: Path, quick: bool, nanogpt: str | None) -> dict[str, Any]:
    """Build each preset once (seed 0, no dropout), save it as a lumenlm model and as its
    HF export: every worker loads these, so all toolkits hold the same weights (the
    dropout task sets the preset's rate at run time)."""
    from lumenlm.train.metrics import flops_per_token, matmul_params

    info = {}
    for name in presets:
        d = root / name
        model = toolkits.save_preset(name, d)
        cfg = model.config
        shape = suite_shape(name, cfg.context_length, quick)
        info[name] = {
            "dir": str(d),
            "params": model.num_parameters(),
            "shape": {**shape.__dict__, "decode_batches": list(shape.decode_batches)},
            "flops_per_token": flops_per_token(
                matmul_params(model), cfg.n_layers, shape.context, cfg.d_model
            ),
            "nanogpt_misfit": toolkits.nanogpt_misfit(cfg)
            if nanogpt
            else "no --nanogpt PATH given",
        }
        del model
    return info


def plan(args: argparse.Namespace, device: Any, info: dict[str, Any]) -> dict[str, Any]:
    """results["cases"][preset][setting][toolkit] entries; a toolkit whose settings are the
    same in (a) and (b) is measured once and its entry shared (`same_as`)."""
    equal_precision = args.equal_precision or ("bf16" if device.type == "cuda" else "fp32")
    cases: dict[str, Any] = {}
    for preset in args.presets:
        case: dict[str, Any] = {s: {} for s in args.settings}
        for toolkit in toolkits.TOOLKITS:
            if toolkit == "nanogpt" and args.nanogpt is None:
                continue
            by_settings: dict[Any, dict[str, Any]] = {}
            for setting in args.settings:
                s = toolkits.settings_for(
                    toolkit, setting, device.type, equal_precision, args.compile
                )
                skip = info[preset]["nanogpt_misfit"] if toolkit == "nanogpt" else None
                # "auto" and what it resolves to are the same run, where it is known now
                resolved = dict(
                    s.to_dict(), precision=toolkits.possible_precisions(s.precision, device)
                )
                key = tuple(sorted(resolved.items()))
                if key in by_settings:
                    entry = dict(by_settings[key], same_as=next(iter(by_settings[key]["serves"])))
                    by_settings[key]["serves"].append(setting)
                else:
                    entry = {"settings": s.to_dict(), "rounds": [], "error": None, "skip": skip,
                             "serves": [setting]}  # fmt: skip
                    by_settings[key] = entry
                case[setting][toolkit] = entry
        cases[preset] = case
    return cases


def run_worker(spec: dict[str, Any], work: Path, name: str, timeout: float) -> dict[str, Any]:
    """Run one worker; its result, or {"error": the last line it printed}."""
    spec_path, result_path, log = (
        work / f"{name}.json",
        work / f"{name}.out.json",
        work / f"{name}.log",
    )
    spec["result"] = str(result_path)
    spec_path.write_text(json.dumps(spec))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    # a worker gets the MKL shim only when its settings ask for it (worker.setup_mkl)
    env = mkl_shim.unpreload_env(env)
    with open(log, "w") as f:
        try:
            rc = subprocess.run(
                [sys.executable, "-m", "benchmarks.worker", str(spec_path)],
                cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False,
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
    if rc == 0 and result_path.exists():
        return json.loads(result_path.read_text())
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return {"error": f"exit {rc}: {(lines[-1] if lines else 'no output')[:300]}"}


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Measure everything; return the results document (see report.py)."""
    import torch
    import transformers

    from lumenlm.devices import configure_threads, resolve_device
    from lumenlm.train.metrics import guess_peak_flops

    device = resolve_device(args.device)
    threads = configure_threads(args.threads)[0]
    nice = os.nice(0)
    meta = {
        "command": "python -m benchmarks" + "".join(" " + shlex.quote(a) for a in argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "hardware": hardware(device), "threads": threads, "device": str(device),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "nanogpt": args.nanogpt, "nice": nice or None,
        "repeats": args.repeats, "iters": args.iters, "warmup": args.warmup,
        "train_warmup": args.train_warmup, "min_s": args.min_s, "quick": args.quick,
        "peak_size": args.peak_size, "peak_repeats": args.peak_repeats,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lumenlm-bench-") as tmp:
        work = Path(tmp)
        _say(f"preparing {', '.join(args.presets)} (weights and HF exports) in {work}")
        info = prepare(args.presets, work, args.quick, args.nanogpt)
        cases = plan(args, device, info)
        precisions = sorted({"fp32"}.union(*(
            toolkits.possible_precisions(e["settings"]["precision"], device)
            for c in cases.values() for s in c.values() for e in s.values())))  # fmt: skip
        meta["device_peak"] = {p: guess_peak_flops(device.type, p) for p in precisions
                               if device.type == "cuda"}  # fmt: skip
        results: dict[str, Any] = {"meta": meta, "presets": info, "cases": cases, "peak": []}
        base = {"device": str(device), "threads": threads}
        for r in range(args.repeats):
            t0 = time.perf_counter()
            peak = run_worker(
                {**base, "kind": "peak", "precisions": precisions, "size": args.peak_size,
                 "repeats": args.peak_repeats, "settings": {"allocator": "tuned", "mkl": "shim"}},
                work, f"r{r}-peak", args.worker_timeout,
            )  # fmt: skip
            if "peak" in peak:
                results["peak"].append(peak["peak"])
                meta["peak_mkl"] = peak.get("mkl")
            meta["rounds_done"] = r
            _say(
                f"[round {r + 1}/{args.repeats}] matmul peak {_peak_text(peak)} ({time.perf_counter() - t0:.0f} s)"
            )
            for preset in args.presets:
                jobs = _unique_entries(cases[preset])
                shift = r % len(jobs)  # rotate who goes first in each round
                for toolkit, entry in jobs[shift:] + jobs[:shift]:
                    if entry["error"] or entry["skip"]:
                        continue
                    t0 = time.perf_counter()
                    spec = {
                        **base, "kind": "case", "toolkit": toolkit, "preset": preset,
                        "settings": entry["settings"], "shape": info[preset]["shape"],
                        "lumenlm_dir": f"{info[preset]['dir']}/lumenlm",
                        "hf_dir": f"{info[preset]['dir']}/hf", "nanogpt": args.nanogpt,
                        "warmup": args.warmup, "train_warmup": args.train_warmup,
                        "iters": args.iters, "min_s": args.min_s,
                    }  # fmt: skip
                    out = run_worker(
                        spec,
                        work,
                        f"r{r}-{preset}-{toolkit}-{'+'.join(entry['serves'])}",
                        args.worker_timeout,
                    )
                    if "error" in out:
                        entry["error"] = out["error"]
                    else:
                        entry["rounds"].append(out)
                    took = time.perf_counter() - t0
                    if args.out:  # after every worker: an interrupted run keeps what it measured
                        _fill_shared(cases)
                        save_json(args.out, results)
                    what = out.get("error") or f"train {report.round_rate(out['train']):,.0f} tok/s"
                    _say(
                        f"[round {r + 1}/{args.repeats}] {preset} {toolkit} ({'+'.join(entry['serves'])}): {what} ({took:.0f} s)"
                    )
    meta["rounds_done"] = args.repeats
    _fill_shared(cases)
    return results


def _fill_shared(cases: dict[str, Any]) -> None:
    """Give each shared entry (`same_as`) the error and skip of the one that ran."""
    for case in cases.values():
        for entries in case.values():
            for toolkit, entry in entries.items():
                if entry.get("same_as"):
                    src = case[entry["same_as"]][toolkit]
                    entry.update(rounds=src["rounds"], error=src["error"], skip=src["skip"])


def save_json(path: str | Path, results: dict[str, Any]) -> None:
    """Write the results document (atomically: a partial run leaves a readable file)."""
    from lumenlm.modelio import atomic_write_text

    atomic_write_text(Path(path), json.dumps(results, indent=1) + "\n")


def _unique_entries(case: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    seen, out = set(), []
    for entries in case.values():
        for toolkit, entry in entries.items():
            if not entry.get("same_as") and id(entry) not in seen:
                seen.add(id(entry))
                out.append((toolkit, entry))
    return out


def _peak_text(peak: dict[str, Any]) -> str:
    if "peak" not in peak:
        return peak.get("error", "?")
    return ", ".join(f"{p} {v / 1e9:.1f} GFLOP/s" for p, v in peak["peak"].items())


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print the Markdown section; write it and the JSON where asked."""
    from lumenlm.errors import LumenError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        if args.render:
            results = json.loads(Path(args.render).read_text())
        else:
            results = run(args, argv)
    except LumenError as exc:
        print(f"python -m benchmarks: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError) as exc:
        print(f"python -m benchmarks: error: --render {args.render}: {exc}", file=sys.stderr)
        return 2
    section = report.render(results)
    print(section)
    if args.out and not args.render:
        save_json(args.out, results)
    if args.write_results:
        _say(f"wrote {report.write_section(args.write_results, section)}")
    failed = [
        e for c in results["cases"].values() for s in c.values() for e in s.values() if e["error"]
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
