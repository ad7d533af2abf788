"""`lumenlm.cbuild`: C compiled once into the cache, named by source and flags, atomically.

The shim's and the packed kernel's own tests load what it builds; here, the naming and
the failures: a source that does not compile, or no compiler, gives None and leaves no
file behind.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from lumenlm import cbuild

SOURCE = "int lumenlm_test_answer(void) { return 42; }\n"


@pytest.fixture
def cc() -> str:
    found = cbuild.compiler()
    if found is None:
        pytest.skip("no C compiler (cc) on this machine")
    return found


def test_a_library_is_named_by_its_source_and_flags(tmp_path: Path, cc: str) -> None:
    a = cbuild.library("answer", SOURCE, ("-O2",), tmp_path)
    assert a is not None and ctypes.CDLL(str(a)).lumenlm_test_answer() == 42
    b = cbuild.library("answer", SOURCE, ("-O1",), tmp_path)
    c = cbuild.library("answer", SOURCE.replace("42", "43"), ("-O2",), tmp_path)
    assert len({a, b, c}) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (a, b, c))


def test_a_source_that_does_not_compile_gives_none(tmp_path: Path, cc: str) -> None:
    assert cbuild.library("broken", "int f( {", ("-O2",), tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # no temporary folder or half a library left


def test_no_compiler_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert cbuild.library("answer", SOURCE, ("-O2",), tmp_path / "cache") is None
    assert not any((tmp_path / "cache").glob("*.so"))


def test_the_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cbuild.cache_dir() == tmp_path / "lumenlm"
