"""What the CPU can do: native bf16 from its flags, the measured bf16 slowdown, and the
one-line warning for bf16 on a CPU that only emulates it."""

from __future__ import annotations

import pytest
import torch

from lumenlm import devices


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch):
    """Pretend to be a CPU with the given flags; count bf16 probes (they cost time)."""
    probes: list[int] = []

    def as_cpu(flags: set[str], slowdown: float = 40.0) -> list[int]:
        monkeypatch.setattr(devices, "cpu_info", lambda: ("Test CPU 9000", frozenset(flags)))

        def probe() -> float:
            probes.append(1)
            return slowdown

        monkeypatch.setattr(devices, "bf16_slowdown", probe)
        return probes

    return as_cpu


def test_cpu_info_reads_this_machine() -> None:
    name, flags = devices.cpu_info()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this system")
    assert name
    assert devices.cpu_bf16_native() == any(f in flags for f in devices.BF16_FLAGS)


@pytest.mark.parametrize("flag", devices.BF16_FLAGS)
def test_native_bf16_cpu_is_not_warned_nor_probed(cpu, capsys, flag: str) -> None:
    probes = cpu({"avx2", flag})
    assert devices.cpu_bf16_native() is True
    assert devices.warn_slow_bf16("cpu", "--precision bf16") is None
    assert probes == [] and capsys.readouterr().err == ""


def test_emulated_bf16_gets_one_line_with_the_measured_slowdown(cpu, capsys) -> None:
    cpu({"avx2", "fma"}, slowdown=73.4)
    line = devices.warn_slow_bf16("cpu", "--dtype bf16")
    err = capsys.readouterr().err
    assert line is not None and err == line + "\n" and "\n" not in line
    assert "--dtype bf16" in line and "73x slower" in line and "Test CPU 9000" in line
    assert line.endswith("use fp32")


def test_gpus_are_never_warned(cpu, capsys) -> None:
    probes = cpu({"avx2"})
    assert devices.warn_slow_bf16(torch.device("meta"), "--dtype bf16") is None
    assert probes == [] and capsys.readouterr().err == ""


def test_unknown_flags_trust_the_probe(cpu, capsys) -> None:
    cpu(set(), slowdown=1.2)  # no flags (not Linux x86) and bf16 about as fast: native
    assert devices.cpu_bf16_native() is None
    assert devices.warn_slow_bf16("cpu", "--precision bf16") is None
    cpu(set(), slowdown=30.0)
    assert devices.warn_slow_bf16("cpu", "--precision bf16") is not None


def test_the_probe_measures_a_real_ratio() -> None:
    ratio = devices.bf16_slowdown.__wrapped__(size=128, repeats=1)
    assert ratio > 0


# -- CPU threads ---------------------------------------------------------------------


@pytest.fixture
def threads():
    """Restore torch's thread count after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_usable_cores_never_exceed_the_affinity_mask() -> None:
    import os

    n = devices.usable_cpu_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_a_cgroup_quota_caps_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(devices, "_cgroup_cpu_quota", lambda: 1.5)
    monkeypatch.setattr(devices, "_physical_cores", lambda cpus: 64)
    assert devices.usable_cpu_cores() == 1
    monkeypatch.setattr(devices, "_cgroup_cpu_quota", lambda: None)
    assert devices.usable_cpu_cores() == 64


def test_cgroup_v2_quota_is_read(tmp_path, monkeypatch) -> None:
    real = devices.Path
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    monkeypatch.setattr(
        devices, "Path", lambda p: tmp_path / "cpu.max" if p.endswith("cpu.max") else real(p)
    )
    assert devices._cgroup_cpu_quota() == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert devices._cgroup_cpu_quota() is None


def test_thread_choice_order(monkeypatch, threads) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LUMENLM_THREADS", raising=False)
    monkeypatch.setattr(devices, "usable_cpu_cores", lambda: 2)
    assert devices.configure_threads() == (2, "usable cores")
    monkeypatch.setattr(devices, "usable_cpu_cores", lambda: 1)
    assert devices.configure_threads() == (1, "usable cores")
    assert torch.get_num_threads() == 1
    assert devices.configure_threads(2) == (2, "--threads")
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert devices.configure_threads() == (2, "OMP_NUM_THREADS")  # the user's choice stands
    monkeypatch.setenv("LUMENLM_THREADS", "1")
    assert devices.configure_threads() == (1, "LUMENLM_THREADS")
    monkeypatch.setenv("LUMENLM_THREADS", "two")
    with pytest.raises(devices.ConfigError, match="LUMENLM_THREADS must be a positive integer"):
        devices.configure_threads()
    with pytest.raises(devices.ConfigError):
        devices.configure_threads(0)
