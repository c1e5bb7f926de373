"""Interrupts: how an interrupted or failed job ends its MLflow runs, and keeping Ray Train's signal handler local.

Ctrl+C (SIGINT) and SIGTERM (which jobs/_common.run_job turns into KeyboardInterrupt) both reach the job as a
KeyboardInterrupt; every MLflow run the job opened is then ended KILLED, and any other exception ends it FAILED, so
no run stays RUNNING in the UI after the process is gone.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator

_HANDLED = (signal.SIGINT, signal.SIGTERM)


def run_status(exc: BaseException | None) -> str:
    """The MLflow run status for a body that ended with `exc`: None → FINISHED, KeyboardInterrupt (Ctrl+C, or SIGTERM
    turned into one by the job entrypoint) → KILLED, any other exception → FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED"
    return "FAILED"


@contextlib.contextmanager
def keep_signal_handlers() -> Iterator[None]:
    """Save the SIGINT/SIGTERM handlers on entry and put them back on exit.

    Ray Train's controller installs its own SIGINT handler during `trainer.fit()` ("Received SIGINT. Gracefully
    aborting the training run") and never removes it: without this, a Ctrl+C in a later stage of the same process (the
    pipeline's evaluate stage) is swallowed by that handler and the job keeps going. Signal handlers can only be set
    from the main thread; elsewhere this does nothing."""
    saved = {sig: signal.getsignal(sig) for sig in _HANDLED}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is None:  # installed from C, not restorable from Python
                continue
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread: Ray Train could not have installed a handler here either
                pass
