"""Training checkpoints: complete model dirs plus the state needed for exact resume.

A checkpoint directory is a model directory (`lumenlm.modelio.save_model`:
config.json, model.safetensors, tokenizer.json, README.md) plus

- `trainer_state.safetensors`: optimizer moments keyed by parameter name
  (`optim/<param>/<key>`) and RNG states as uint8 tensors (`rng/torch_cpu/rank<r>`,
  `rng/cuda/rank<r>`);
- `trainer_state.json`: counters, sampler position, best metric, early-stopping
  counter, optimizer hyper-parameters, scaler state, python/numpy RNG states;
- `manifest.json` (written last): sha256 of every file, checked on load.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumenlm.data.download import sha256_file
from lumenlm.errors import CheckpointError, first_line
from lumenlm.fsutil import replace_dir
from lumenlm.modelio import make_temp_dir

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step_(\d+)$")
LEFTOVER = re.compile(r"^\.(.+)\.(?:old|tmp)\.[^.]+$")


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
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest = {
            "files": {name: sha256_file(tmp / name) for name in files},
            "step": state.get("step"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
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
    path = ckpt / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: incomplete checkpoint (no {MANIFEST})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{path}: corrupt manifest") from None
    for name in (STATE_TENSORS, STATE_JSON, "model.safetensors", "config.json"):
        if name not in files:
            raise CheckpointError(f"{ckpt}: manifest does not list {name}")
    for name, digest in files.items():
        f = ckpt / name
        if not f.exists():
            raise CheckpointError(f"{f}: missing")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch (corrupt or modified)")


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
            f"{run_dir}: no checkpoints to resume from (checkpoints/last missing)"
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
