"""lumenlm.signals: handlers live only while the work runs, and are always put back."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from lumenlm.signals import StopRequest, Terminated, sigterm_raises


def test_stop_request_sets_a_flag_and_restores_handlers() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopRequest() as stop:
        assert stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and stop.name == "SIGTERM"
    assert {s: signal.getsignal(s) for s in before} == before


def test_second_sigint_means_now() -> None:
    with StopRequest() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)


def test_handlers_come_back_after_an_exception() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError), StopRequest():
        raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_raises_terminated_with_status_143() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as exc, sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
    assert exc.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_off_the_main_thread_nothing_is_installed() -> None:
    seen: list[object] = []

    def work() -> None:
        with StopRequest() as stop:
            seen.append(stop.signum)
        with sigterm_raises():
            seen.append("ok")

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [None, "ok"] and signal.getsignal(signal.SIGTERM) == before
