"""Interrupts: how an interrupted or failed job ends its MLflow runs, and keeping Ray's signal handlers local.

Ctrl+C (SIGINT) raises KeyboardInterrupt; SIGTERM (`kill`, a scheduler, `docker stop`) raises `Terminated`, a
KeyboardInterrupt, while jobs/_common.run_job runs a job's body (`sigterm_raises`). Every MLflow run the job opened
is then ended KILLED, and any other exception ends it FAILED (`run_status`), so no run stays RUNNING in the UI after
the process is gone; the job exits 130 (Ctrl+C) or 143 (SIGTERM), 128 + the signal number as shells report it
(`exit_code`).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_HANDLED = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so that every path written for Ctrl+C (MLflow runs ended KILLED, the
    local Ray torn down, a one-line message) serves a `kill` too."""


def run_status(exc: BaseException | None) -> str:
    """The MLflow run status for a body that ended with `exc`: None → FINISHED, KeyboardInterrupt (Ctrl+C, or SIGTERM
    turned into one by the job entrypoint) → KILLED, any other exception → FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED"
    return "FAILED"


def exit_code(exc: KeyboardInterrupt) -> int:
    """The exit status of an interrupted job: 143 (128 + SIGTERM) for `Terminated`, 130 (128 + SIGINT) for Ctrl+C —
    what a shell reports for a process killed by that signal, so callers and schedulers read it the same way."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"received {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the body runs, SIGTERM raises `Terminated` in the main thread instead of killing the process outright:
    with the default action the process dies without unwinding, its MLflow runs stay RUNNING and the local Ray it
    started is never shut down. Elsewhere than the main thread (where handlers cannot be set) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with keep_signal_handlers():
        signal.signal(signal.SIGTERM, _raise_terminated)
        yield


@contextlib.contextmanager
def keep_signal_handlers() -> Iterator[None]:
    """Save the SIGINT/SIGTERM handlers on entry and put them back on exit.

    Why: Ray Train V2 installs its own SIGINT handler in `trainer.fit()` ("Received SIGINT. Gracefully aborting the
    training run") and Ray Tune one in `tuner.fit()`, and neither removes it when the fit returns. Without this a
    Ctrl+C in a later stage of the same process (the pipeline's evaluate stage) is swallowed by that handler and the
    job keeps going.

    On Ctrl+C during the fit, Ray Train's handler aborts the run (the controller stops the workers) and exits the
    driver with SystemExit (exit status 0 or 1, as if nothing had been interrupted): a SystemExit raised while a
    handler installed in the body is in place is re-raised here as KeyboardInterrupt, so the job ends its MLflow runs
    KILLED and exits 130 like any other Ctrl+C."""
    saved = {sig: signal.getsignal(sig) for sig in _HANDLED}
    try:
        yield
    except SystemExit as e:
        if signal.getsignal(signal.SIGINT) is saved[signal.SIGINT]:
            raise
        raise KeyboardInterrupt("interrupted during a Ray fit (its SIGINT handler aborted the run)") from e
    finally:
        for sig, handler in saved.items():
            if handler is None:  # installed from C, not restorable from Python
                continue
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread: Ray could not have installed a handler here either
                pass
