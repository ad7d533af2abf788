"""Training checkpoints: complete model dirs plus the state needed for exact resume.

A checkpoint directory is a model directory (`lumenlm.modelio.save_model`:
config.json, model.safetensors, tokenizer.json, README.md) plus

- `trainer_state.safetensors`: optimizer moments keyed by parameter name
  (`optim/<param>/<key>`) and RNG states as uint8 tensors (`rng/torch_cpu/rank<r>`,
  `rng/cuda/rank<r>`);
- `trainer_state.json`: counters, sampler position, best metric, early-stopping
  counter, optimizer hyper-parameters, scaler state, python/numpy RNG states;
- `manifest.json` (written last): sha256 of every file, checked on load.

`Progress` (the loop's counters) and `pack_state` / `read_state` turn the trainer's
live objects into those two files and back, so the trainer itself never sees the
on-disk layout.

Nothing is pickled. Each checkpoint is written into a temporary sibling directory
and renamed into place, so a crash leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumenlm.errors import CheckpointError, first_line
from lumenlm.fsutil import replace_dir
from lumenlm.modelio import (
    CONFIG_NAME,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    make_temp_dir,
    verify_manifest,
    write_manifest,
)
from lumenlm.train import distributed as D
from lumenlm.train.early_stop import EarlyStopping

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
MANIFEST = MANIFEST_NAME
STEP_DIR = re.compile(r"^step_(\d+)$")
LEFTOVER = re.compile(r"^\.(.+)\.(?:old|tmp)\.[^.]+$")


# -- trainer state <-> files --------------------------------------------------------


@dataclass
class Progress:
    """Counters saved in every checkpoint (with the sampler position)."""

    step: int = 0
    """Optimizer steps done."""
    tokens_seen: int = 0
    """Training tokens consumed, all ranks together."""
    elapsed_s: float = 0.0
    """Wall time spent training, summed over invocations."""
    total_steps: int = 0
    """Planned optimizer steps: the schedule's length."""
    decay_steps: int | None = None
    """The warmup-stable-decay decay's length in steps, fixed when a `--max-minutes`
    budget started it (total_steps then ends with it); None: planned from the steps."""
    best_val_loss: float | None = None
    """Best of all evaluations: picks checkpoints/best."""
    best_step: int | None = None
    """The step of `best_val_loss`."""
    last_eval_step: int = -1
    """The step of the latest evaluation (-1: none yet)."""
    status: str = "running"
    """running, finished, paused, interrupted, early_stopped, diverged."""


@dataclass
class TrainerState:
    """What a checkpoint gives back to a resuming trainer (for one rank)."""

    progress: Progress
    es_best: float | None
    es_bad: int
    sampler: dict[str, Any]
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: tuple[dict[str, Any], dict[str, torch.Tensor]] | None
    """This rank's saved RNG states, or None when it was not saved (more ranks now)."""


def pack_state(
    progress: Progress,
    *,
    es_best: float | None,
    es_bad: int,
    sampler: dict[str, Any],
    world_size: int,
    optimizer: dict[str, Any],
    scaler: dict[str, Any] | None,
    rng: list[tuple[dict[str, Any], dict[str, torch.Tensor]]],
    precision: str,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON state) for `write_checkpoint`; `rng` holds every rank's states."""
    tensors, optim_js = flatten_optimizer(optimizer)
    for r, (_, rng_t) in enumerate(rng):
        for key, t in rng_t.items():
            tensors[f"rng/{key}/rank{r}"] = t
    state = {
        "format": "lumenlm-trainer",
        "version": 1,
        **asdict(progress),
        "es_best": es_best,
        "es_bad": es_bad,
        "sampler": sampler,
        "world_size": world_size,
        "optimizer": optim_js,
        "scaler": scaler,
        "rng": [js for js, _ in rng],
        "precision": precision,
    }
    return tensors, state


def read_state(ckpt: Path, rank: int) -> TrainerState:
    """Inverse of `pack_state`, for process `rank`, from a verified checkpoint."""
    state, tensors = load_trainer_state(ckpt)
    known = {f.name for f in fields(Progress)}
    progress = Progress(**{k: v for k, v in state.items() if k in known})
    rng_js = state.get("rng") or []
    rng = None
    if rank < len(rng_js) and f"rng/torch_cpu/rank{rank}" in tensors:
        rank_t = {
            k.split("/")[1]: v
            for k, v in tensors.items()
            if k.startswith("rng/") and k.endswith(f"/rank{rank}")
        }
        rng = (rng_js[rank], rank_t)
    return TrainerState(
        progress=progress,
        es_best=state.get("es_best"),
        es_bad=int(state.get("es_bad") or 0),
        sampler=state["sampler"],
        optimizer=unflatten_optimizer(tensors, state["optimizer"]),
        scaler=state.get("scaler"),
        rng=rng,
    )


EXPLODED = 1e4
"""A weight this large (in absolute value) means the run diverged: the trained models
here keep |w| near 1, so such weights are never saved as a checkpoint."""


def largest_weight(model: torch.nn.Module) -> float:
    """max |w| over this process's parameters (its shards under FSDP); nan/inf if any is."""
    with torch.no_grad():
        local = [
            (p.to_local() if hasattr(p, "to_local") else p).detach() for p in model.parameters()
        ]
        local = [t for t in local if t.numel()]  # an FSDP rank may hold empty shards
        if not local:
            return 0.0
        return float(torch.stack([t.abs().amax().float() for t in local]).max())


def largest_weight_of(ckpt: Path) -> float:
    """max |w| over a checkpoint's saved weights (nan/inf if any is)."""
    from safetensors.torch import load_file

    tensors = load_file(str(ckpt / "model.safetensors"))
    return max((float(t.abs().max()) for t in tensors.values() if t.numel()), default=0.0)


@dataclass
class Live:
    """The trainer's live objects that a checkpoint's state is packed from and put back
    into (`model` is the unwrapped GPT, sharded in place under FSDP)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    sampler: Any
    env: D.DistEnv


def gather_state(
    progress: Progress, early: EarlyStopping, live: Live, precision: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The trainer state of all ranks, packed on the main one (None elsewhere).

    Collective under torchrun: every rank must call it at the same step.
    """
    osd = D.full_optimizer_state(live.model, live.optimizer)
    rng_all = D.all_gather_object(capture_rng(), live.env)
    if not live.env.is_main:
        return None
    return pack_state(
        progress,
        es_best=early.best,
        es_bad=early.bad,
        sampler=live.sampler.state_dict(),
        world_size=live.env.world_size,
        optimizer=osd,
        scaler=live.scaler.state_dict() if live.scaler else None,
        rng=rng_all,
        precision=precision,
    )


def restore_state(ckpt: Path, early: EarlyStopping, live: Live, seed: int) -> Progress:
    """Put a checkpoint's batch order, optimizer, scaler, early stopping and RNG back
    into the live objects; return its counters."""
    st = read_state(ckpt, live.env.rank)
    early.best, early.bad = st.es_best, st.es_bad
    live.sampler.load_state_dict(st.sampler)
    D.load_optimizer_state(live.model, live.optimizer, st.optimizer)
    if live.scaler is not None and st.scaler:
        live.scaler.load_state_dict(st.scaler)
    if st.rng is not None:
        restore_rng(*st.rng)
    else:  # resumed on more ranks than saved: fresh, deterministic stream for this rank
        torch.manual_seed(seed + 1_000_003 * (live.env.rank + 1) + st.progress.step)
    return st.progress


# -- RNG ---------------------------------------------------------------------------


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This process's RNG states: (JSON-able python/numpy states, torch tensors)."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    js = {
        "python": [version, list(mt), gauss],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
    }
    tensors = {"torch_cpu": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state().clone()
    return js, tensors


def restore_rng(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `capture_rng`."""
    version, mt, gauss = js["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])


# -- optimizer state <-> flat tensors ---------------------------------------------


def flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Name-keyed optimizer state dict -> (tensors, JSON) for safetensors + JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, st in osd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{name}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in osd["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer`."""
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim/"):
            continue
        name, sub = key[len("optim/") :].rsplit("/", 1)
        state.setdefault(name, {})[sub] = value
    for name, extra in js.get("scalars", {}).items():
        state.setdefault(name, {}).update(extra)
    groups = []
    for g in js["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# -- writing -----------------------------------------------------------------------


def write_checkpoint(
    target: Path,
    save_model_fn: Any,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    readme: str | None = None,
) -> Path:
    """Write a checkpoint to `target` atomically (temp dir + rename).

    `save_model_fn(dir)` writes the model dir part (config, weights, tokenizer).
    """
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(target)
    try:
        save_model_fn(tmp)
        save_file(tensors, str(tmp / STATE_TENSORS), metadata={"format": "lumenlm-trainer"})
        (tmp / STATE_JSON).write_text(json.dumps(state, indent=1) + "\n")
        if readme is not None:
            (tmp / "README.md").write_text(readme)
        write_manifest(tmp, {"step": state.get("step")})  # last: it seals the checkpoint
        for p in tmp.iterdir():  # flush file contents before the rename makes them visible
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        replace_dir(tmp, target, target.with_name(f".{target.name}.old.{os.getpid()}"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_leftovers(target.parent, target.name)
    return target


def write_checkpoints(
    root: Path,
    names: list[str],
    save_model_fn: Any,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    readme: str | None,
    keep_periodic: int,
) -> None:
    """Write the same checkpoint under each of `names` (last, step_<N>, best), keep the
    `keep_periodic` newest step_<N>, and clear what a crash mid-save left behind."""
    for name in names:
        write_checkpoint(root / name, save_model_fn, tensors, state, readme)
        if STEP_DIR.match(name):
            prune_periodic(root, keep_periodic)
    prune_leftovers(root)  # stale .NAME.old.* / .NAME.tmp.* from a crash


def _leftovers(root: Path, name: str | None = None) -> list[Path]:
    """`.NAME.old.*` / `.NAME.tmp.*` dirs a crash mid-replacement may leave behind."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = LEFTOVER.match(p.name)
        if m and p.is_dir() and (name is None or m.group(1) == name):
            out.append(p)
    return out


def prune_leftovers(root: Path, name: str | None = None) -> None:
    """Remove stale leftovers (of checkpoint `name`, or of all) after a successful save."""
    for p in _leftovers(root, name):
        shutil.rmtree(p, ignore_errors=True)


def prune_periodic(root: Path, keep: int) -> None:
    """Keep the `keep` newest `step_<N>` checkpoints (last and best are never pruned)."""
    steps = _step_dirs(root)
    for p in steps[:-keep] if keep > 0 else steps:
        shutil.rmtree(p, ignore_errors=True)


def _step_dirs(root: Path) -> list[Path]:
    """The periodic `step_<N>` checkpoint folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    steps = ((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)))
    return [p for _, p in sorted(steps) if p.is_dir()]


# -- reading -----------------------------------------------------------------------


def verify(ckpt: Path) -> None:
    """Raise CheckpointError unless every file listed in the manifest matches its sha256."""
    if not verify_manifest(ckpt, required=(STATE_TENSORS, STATE_JSON, WEIGHTS_NAME, CONFIG_NAME)):
        raise CheckpointError(f"{ckpt}: incomplete checkpoint (no {MANIFEST})")


def load_trainer_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(trainer_state.json, trainer_state.safetensors tensors) of a verified checkpoint."""
    from safetensors.torch import load_file

    verify(ckpt)
    try:
        state = json.loads((ckpt / STATE_JSON).read_text())
        tensors = load_file(str(ckpt / STATE_TENSORS))
    except Exception as exc:
        first = first_line(exc)
        raise CheckpointError(f"{ckpt}: cannot read trainer state ({first})") from None
    return state, tensors


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoints to resume from, best choice first: last, periodic newest first, best,
    then crash leftovers (`.NAME.old.*`, `.NAME.tmp.*`); the caller verifies each."""
    root = run_dir / "checkpoints"
    out = [root / "last", *reversed(_step_dirs(root)), root / "best"]
    # A crash between moving NAME aside (.NAME.old.PID) and renaming the finished temp
    # dir (.NAME.tmp.*) into place leaves no NAME: those count too once they verify.
    out += sorted(
        (p for p in _leftovers(root) if ".old." in p.name or (p / MANIFEST).exists()),
        key=lambda p: p.name,
    )
    return [p for p in out if p.is_dir()]


def find_resume_checkpoint(run_dir: Path, log: Any = None) -> Path:
    """The newest checkpoint of `run_dir` that verifies; notices for any skipped one.

    The highest step among the good ones wins (so a corrupt `last` falls back to the
    newest good periodic checkpoint).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    found = candidates(run_dir)
    if not found:
        raise CheckpointError(
            f"{run_dir}: no checkpoint to resume from (the run stopped before its first "
            "checkpoint was written); start a new run"
        )
    # Hash only what is needed: try the candidates from the highest recorded step down
    # (candidates() order breaks ties) and stop at the first that verifies.
    found.sort(key=lambda p: -_recorded_step(p))
    problems = []
    for p in found:
        try:
            verify(p)
            step = int(json.loads((p / STATE_JSON).read_text())["step"])
        except (CheckpointError, KeyError, ValueError, json.JSONDecodeError) as exc:
            problems.append(str(exc))
            log(f"notice: skipping checkpoint {p.name}: {exc}")
            continue
        if p.name != "last":
            log(f"notice: resuming from {p.name} (step {step}) instead of last")
        return p
    raise CheckpointError(f"{run_dir}: no intact checkpoint to resume from ({problems[0]})")


def _recorded_step(ckpt: Path) -> int:
    """The step a checkpoint says it holds (-1 when unreadable; it is verified anyway)."""
    try:
        return int(json.loads((ckpt / STATE_JSON).read_text())["step"])
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError):
        return -1
