"""Shared helpers for the training tests: tiny synthetic prepared datasets, the tiny
recipe, `lumenlm train` argument lists and runners. (No tests here.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from lumenlm.data.tokens import write_token_dataset

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The `lumenlm` entry point, run by this interpreter.
LUMENLM = [PYTHON, "-c", "import sys; from lumenlm.cli import main; sys.exit(main())"]


def lumenlm_sleeping_in_checkpoint_writes(seconds: float) -> list[str]:
    """`LUMENLM` whose checkpoint writes pause `seconds` after the model and trainer
    state files are written and before the manifest seals them (a window to kill in)."""
    code = (
        "import sys, time; import lumenlm.train.checkpoint as c; w = c.write_manifest; "
        f"c.write_manifest = lambda *a, **k: (time.sleep({seconds}), w(*a, **k))[1]"
        "; from lumenlm.cli import main; sys.exit(main())"
    )
    return [PYTHON, "-c", code]


def slow_lumenlm(step_delay: float) -> list[str]:
    """`LUMENLM` whose training sleeps `step_delay` s after each optimizer step (through
    the trainer's `on_step` callback), so a test can signal or kill it mid-run."""
    code = (
        "import functools, sys, time; import lumenlm.train.api as api; "
        f"api.train = functools.partial(api.train, on_step=lambda t: time.sleep({step_delay}))"
        "; from lumenlm.cli import main; sys.exit(main())"
    )
    return [PYTHON, "-c", code]


# A tiny, fast model and recipe: no dropout (so DDP == single process exactly) unless asked.
TINY = {
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "d_ff": 64,
    "context_length": 16,
    "batch_size": 4,
    "warmup_steps": 3,
    "log_interval": 1,
    "eval_interval": 5,
    "eval_batches": 2,
    "checkpoint_interval": 4,
    "seed": 7,
}


def make_dataset(
    path: Path,
    n_train: int = 4000,
    n_val: int = 600,
    vocab: int = 300,
    seed: int = 0,
    tokenizer: bool = False,
    doc_len: tuple[int, int] | None = None,
) -> Path:
    """A prepared-dataset dir (train/val/test .bin + meta.json) of learnable synthetic text.

    `doc_len=(lo, hi)` cuts the streams into documents of lo..hi tokens, each followed by
    the end-of-text id 0 (otherwise 0 only turns up by chance)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        toks = np.empty(n, dtype=np.uint16)
        t = int(rng.integers(vocab))
        for i in range(n):  # mostly-deterministic successor: a learnable bigram structure
            t = (3 * t + 1) % vocab if rng.random() < 0.8 else int(rng.integers(vocab))
            toks[i] = t
        if doc_len is not None:
            toks[toks == 0] = 2  # 0 marks document ends only
            i = int(rng.integers(*doc_len))
            while i < n:
                toks[i] = 0
                i += 1 + int(rng.integers(*doc_len))
        splits[split] = toks
    write_token_dataset(path, splits, vocab, eot_id=0, pad_id=1, bytes_per_token=4.0)
    if tokenizer:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=["<|endoftext|>", "<|pad|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(["once upon a time there was a tiny model"] * 50, trainer)
        tok.save(str(path / "tokenizer.json"))
    return path


def overrides(**extra: object) -> dict[str, object]:
    out: dict[str, object] = dict(TINY)
    out.update(extra)
    return out


def set_args(**extra: object) -> list[str]:
    args: list[str] = []
    for k, v in overrides(**extra).items():
        args += ["--set", f"{k}={json.dumps(v) if v is None or isinstance(v, bool) else v}"]
    return args


# The flag that bounds one `lumenlm train` invocation (a run may take several); the run's
# plan is `--set max_steps=N`. Written here only, so a rename is one line.
STOP_FLAG = "--stop-at-step"


def stop_args(step: int) -> list[str]:
    """The arguments that stop this invocation at `step`."""
    return [STOP_FLAG, str(step)]


def train_argv(
    data: Path | str,
    out: Path | str,
    *,
    preset: str | None = "tiny",
    stop_at: int | None = None,
    sets: Mapping[str, object] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """`train --preset P --data D --out O --device cpu --no-progress ...` for
    `lumenlm.cli.main`, `run_cli` or a subprocess after `LUMENLM`.

    preset: None leaves `--preset` out (for `--config`, or a preset given in `extra`).
    stop_at: stop this invocation at that step (`stop_args`).
    sets: `--set` overrides on top of TINY, as `set_args`; None gives no `--set` at all.
    extra: more arguments, appended last."""
    argv = ["train"]
    if preset is not None:
        argv += ["--preset", preset]
    argv += ["--data", str(data), "--out", str(out), "--device", "cpu", "--no-progress"]
    if stop_at is not None:
        argv += stop_args(stop_at)
    if sets is not None:
        argv += set_args(**sets)
    return [*argv, *extra]


def resume_argv(
    run: Path | str, *, stop_at: int | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """`train --resume RUN --device cpu --no-progress ...`."""
    argv = ["train", "--resume", str(run), "--device", "cpu", "--no-progress"]
    if stop_at is not None:
        argv += stop_args(stop_at)
    return [*argv, *extra]


# A short plan for runs that tests pause, crash or resume: 12 steps, a checkpoint every
# 2, no periodic evaluation.
SHORT_PLAN = {"max_steps": 12, "checkpoint_interval": 2, "eval_interval": 1000}


def train_tiny(data: Path, out: Path, *, stop: int | None = None, **kw: object) -> Path:
    """`lumenlm.train.train("tiny", ...)` on CPU with TINY + SHORT_PLAN + `kw` overrides;
    `stop` bounds this invocation (`stop_at_step=`)."""
    from lumenlm.train import train

    return train(
        "tiny",
        data,
        out,
        overrides(**{**SHORT_PLAN, **kw}),
        stop_at_step=stop,
        device="cpu",
        progress_bar=False,
    )


def run_config(run: Path) -> dict:
    """A run's config.json."""
    return json.loads((run / "config.json").read_text())


def weights(run_or_ckpt: Path) -> dict[str, torch.Tensor]:
    d = (
        run_or_ckpt / "checkpoints" / "last"
        if (run_or_ckpt / "checkpoints").exists()
        else run_or_ckpt
    )
    return load_file(str(d / "model.safetensors"))


def trainer_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "last" / "trainer_state.safetensors"))


def assert_same_state(a: Path, b: Path) -> None:
    """Bit-identical weights AND optimizer state in the two runs' last checkpoints."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"weight {k} differs"
    ta = {k: v for k, v in trainer_tensors(a).items() if k.startswith("optim/")}
    tb = {k: v for k, v in trainer_tensors(b).items() if k.startswith("optim/")}
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"optimizer state {k} differs"


def run_cli(args: list[str], timeout: float = 300, **popen: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*LUMENLM, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        **popen,
    )


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]
