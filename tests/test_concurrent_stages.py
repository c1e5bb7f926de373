"""Stages at the same time (kd/runtime/concurrent_stages.py, `nokd_twin_concurrent`): they really overlap, a failure
waits for the others, an interrupt aborts the unfinished ones, and the pipeline groups only a student with its twin
(tests/test_pipeline.py). The real trainings side by side: tests/test_pipeline_twin.py."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from kd.runtime.concurrent_stages import fits_together, run_together


def test_bodies_overlap_and_each_reports_its_summary_and_seconds():
    started = threading.Barrier(2, timeout=5)  # both must be running at once to pass it

    def body(name):
        def fn():
            started.wait()
            time.sleep(0.05)
            return {"name": name}
        return fn

    out = run_together({"a": body("a"), "b": body("b")})
    assert {k: o.summary for k, o in out.items()} == {"a": {"name": "a"}, "b": {"name": "b"}}
    assert all(o.error is None and o.seconds >= 0.05 for o in out.values())


def test_a_failure_lets_the_others_finish_and_is_reported():
    def bad():
        raise RuntimeError("boom")

    def slow():
        time.sleep(0.2)
        return {"ok": True}

    out = run_together({"bad": bad, "slow": slow})
    assert isinstance(out["bad"].error, RuntimeError) and out["bad"].summary is None
    assert out["slow"].summary == {"ok": True}


def test_an_interrupt_aborts_the_unfinished_bodies_and_propagates():
    release = threading.Event()
    aborted: list[tuple[str, str]] = []

    def quick():
        return {}

    def stuck():
        release.wait(10)
        return {}

    timer = threading.Timer(0.3, lambda: signal.raise_signal(signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_together({"quick": quick, "stuck": stuck},
                     {n: (lambda exc, n=n: aborted.append((n, type(exc).__name__))) for n in ("quick", "stuck")},
                     poll_seconds=0.05)
    release.set()
    assert time.monotonic() - t0 < 3, "the interrupt must not wait for the bodies"
    assert aborted == [("stuck", "KeyboardInterrupt")], "only the unfinished body is aborted"


def test_fits_together_sums_the_needs():
    assert fits_together({"a": {"CPU": 1}, "b": {"CPU": 1}}, {"CPU": 2.0}) is None
    assert fits_together({"a": {"CPU": 2}, "b": {"CPU": 2}}, {"CPU": 2.0}) == "CPU 4 > 2"
    assert fits_together({"a": {"CPU": 1, "GPU": 1}, "b": {"CPU": 1, "GPU": 1}}, {"CPU": 8.0, "GPU": 1.0}) == \
        "GPU 2 > 1"
