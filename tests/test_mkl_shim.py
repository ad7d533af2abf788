"""lumenlm.mkl_shim: where it applies, how it is built, the re-exec, and that MKL's
products under it are the same products (fp64 reference; a model's loss and gradients
against this unshimmed process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lumenlm import mkl_shim

ROOT = Path(__file__).resolve().parents[1]
AMD = {"vendor": "AuthenticAMD", "flags": frozenset({"avx2", "fma", "sse2"})}


def _cpu(monkeypatch: pytest.MonkeyPatch, vendor: str, flags: frozenset[str]) -> None:
    monkeypatch.setattr(mkl_shim, "cpu_vendor_flags", lambda: (vendor, flags))
    monkeypatch.setattr(mkl_shim.platform, "system", lambda: "Linux")
    monkeypatch.setattr(mkl_shim.platform, "machine", lambda: "x86_64")


def test_applies_only_to_amd_with_avx2_and_fma(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, AMD["vendor"], AMD["flags"])
    assert mkl_shim.applies({}) is None
    assert mkl_shim.applies({"LD_PRELOAD": "/usr/lib/libtcmalloc.so"}) is None
    assert "disabled" in mkl_shim.applies({"LUMENLM_MKL": "system"})
    assert "already" in mkl_shim.applies({"LD_PRELOAD": "/x/libfakeintel.so"})
    _cpu(monkeypatch, "GenuineIntel", AMD["flags"])
    assert "not an AMD CPU (GenuineIntel)" == mkl_shim.applies({})
    _cpu(monkeypatch, "AuthenticAMD", frozenset({"avx", "sse2"}))
    assert "AVX2" in mkl_shim.applies({})
    monkeypatch.setattr(mkl_shim.platform, "system", lambda: "Darwin")
    assert mkl_shim.applies({}) == "not Linux x86-64"


def test_preload_env_keeps_what_was_preloaded(tmp_path: Path) -> None:
    lib = tmp_path / "shim.so"
    env = mkl_shim.preload_env(lib, {"LD_PRELOAD": "/usr/lib/libtcmalloc.so", "A": "1"})
    assert env["LD_PRELOAD"] == f"{lib} /usr/lib/libtcmalloc.so"
    assert env[mkl_shim.ACTIVE_ENV] == str(lib) and env["A"] == "1"
    assert mkl_shim.preload_env(lib, {})["LD_PRELOAD"] == str(lib)
    assert mkl_shim.unpreload_env(env) == {"LD_PRELOAD": "/usr/lib/libtcmalloc.so", "A": "1"}
    assert mkl_shim.unpreload_env(mkl_shim.preload_env(lib, {})) == {}


def _compiler() -> str | None:
    import shutil

    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def test_build_compiles_once_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if _compiler() is None:
        pytest.skip("no C compiler (cc) on this machine: the shim cannot be built")
    lib = mkl_shim.build(tmp_path)
    assert lib is not None and lib.is_file() and lib.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [lib.name]  # no temporary left behind
    import ctypes

    assert ctypes.CDLL(str(lib)).mkl_serv_intel_cpu_true() == 1

    def no_compile(*a: object, **k: object) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(mkl_shim.cbuild.subprocess, "run", no_compile)
    assert mkl_shim.build(tmp_path) == lib


def test_build_without_a_compiler_gives_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert mkl_shim.build(tmp_path / "cache") is None
    assert not any((tmp_path / "cache").glob("*.so"))


def test_setup_when_it_does_not_apply_returns_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUMENLM_MKL", "system")
    monkeypatch.delenv(mkl_shim.ACTIVE_ENV, raising=False)
    assert mkl_shim.setup() == "disabled (LUMENLM_MKL=system)"
    assert mkl_shim.setup(enabled=False) == "disabled (--system-mkl)"


def _shim_env(tmp_path: Path) -> dict[str, str]:
    why = mkl_shim.applies({})
    if why is not None:
        pytest.skip(f"the shim does not apply on this machine: {why}")
    if _compiler() is None:
        pytest.skip("no C compiler (cc) on this machine: the shim cannot be built")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", mkl_shim.ACTIVE_ENV)}
    env.pop("LUMENLM_MKL", None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def test_cli_reexecutes_itself_with_the_shim(tmp_path: Path) -> None:
    env = _shim_env(tmp_path)
    cmd = [sys.executable, "-m", "lumenlm", "presets", "--debug"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "MKL shim: active" in proc.stderr
    assert "librarian-1.3m" in proc.stdout  # the command ran (once: its output once)
    assert proc.stdout.count("librarian-1.3m") == subprocess.run(
        cmd, env={**env, "LUMENLM_MKL": "system"}, capture_output=True, text=True, timeout=300
    ).stdout.count("librarian-1.3m")
    off = subprocess.run(
        [*cmd, "--system-mkl"], env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert "MKL shim: disabled (--system-mkl)" in off.stderr


CHILD = r"""
import json, sys, torch
from lumenlm import mkl_shim
from lumenlm.model import GPT
from lumenlm.presets import get_preset
print(mkl_shim.setup(), file=sys.stderr)
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
errs = []
for m, k, n in ((4096, 128, 8000), (1, 128, 8000), (8, 512, 2048), (300, 1000, 7), (1024, 1024, 1024)):
    a = torch.randn(m, k, generator=g, dtype=torch.float64)
    b = torch.randn(k, n, generator=g, dtype=torch.float64)
    err = ((a.float() @ b.float()).double() - a @ b).abs() / (a.abs() @ b.abs())
    errs.append(err.max().item())
torch.manual_seed(0)
model = GPT(get_preset("librarian-1.3m").model.with_dropout(0.0))
x = torch.randint(0, 8000, (4, 64), generator=g)
loss = model(x, x, return_logits=False).loss
loss.backward()
grads = {n: p.grad.abs().sum().item() for n, p in model.named_parameters()}
print(json.dumps({"active": mkl_shim.active() is not None, "errs": errs,
                  "loss": loss.item(), "grads": grads}))
"""


def test_products_under_the_shim_are_the_same_products(tmp_path: Path) -> None:
    """Under the shim: every product within fp32 GEMM rounding of fp64 (error / sum of
    |terms| below 2^-20 at k <= 8000), and a model's loss and gradients equal to this
    process's (no shim) to float tolerance."""
    env = _shim_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["active"]
    assert max(out["errs"]) < 2**-20, out["errs"]
    from lumenlm.model import GPT
    from lumenlm.presets import get_preset

    g = torch.Generator().manual_seed(0)
    for m, k, n in ((4096, 128, 8000), (1, 128, 8000), (8, 512, 2048), (300, 1000, 7)):
        torch.randn(m, k, generator=g, dtype=torch.float64)
        torch.randn(k, n, generator=g, dtype=torch.float64)
    torch.randn(1024, 1024, generator=g, dtype=torch.float64)
    torch.randn(1024, 1024, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = GPT(get_preset("librarian-1.3m").model.with_dropout(0.0))
    x = torch.randint(0, 8000, (4, 64), generator=g)
    loss = model(x, x, return_logits=False).loss
    loss.backward()
    assert out["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for name, p in model.named_parameters():
        # abs: a key bias gets no gradient in exact arithmetic, only rounding noise
        want = pytest.approx(p.grad.abs().sum().item(), rel=1e-4, abs=1e-6)
        assert out["grads"][name] == want, name


def test_a_shim_the_loader_ignored_is_reported(tmp_path: Path) -> None:
    """LD_PRELOAD naming a file the loader cannot load: setup says so, no re-exec loop."""
    bad = tmp_path / "missing.so"
    env = {**os.environ, "LD_PRELOAD": str(bad), mkl_shim.ACTIVE_ENV: str(bad)}
    env.pop("LUMENLM_MKL", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    code = "from lumenlm import mkl_shim; print(mkl_shim.setup())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "preload failed (the loader ignored the shim)"


def test_only_the_lumenlm_command_itself_is_run_again() -> None:
    from lumenlm.cli import started_as_command

    assert started_as_command("/x/.venv/bin/lumenlm")
    assert started_as_command("/x/src/lumenlm/__main__.py")
    assert not started_as_command("/home/me/train_my_model.py")  # a script calling main()
    assert not started_as_command("-c")
    assert not started_as_command("/x/other/__main__.py")
