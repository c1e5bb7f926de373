"""Pipeline stages that run at the same time: a KD student and its no-KD twin (`nokd_twin_concurrent: true`).

Why: on a small CPU machine one training's intra-op threads scale poorly over the cores — one step of the
quickstart's 2-layer MiniLM BERT_DOT (16 triples, fp32, AVX2 only) takes 1.66 s on 1 thread and 1.20 s on 2, only
1.38× — so two 1-core trainings side by side finish sooner than two 2-core ones in a row, and their start-ups (the
Ray Train worker group, DeepSpeed, the MLflow model logging) overlap as well.

Each stage's body runs in a daemon thread of the driver (Ray Train V2's fit() installs no signal handler off the
main thread); the main thread waits. Ctrl+C and SIGTERM land in the main thread: it calls every unfinished stage's
`abort(exc)` (which ends that stage's MLflow run KILLED) and re-raises; the job then tears down the Ray it started,
which stops the workers, and the daemon threads never keep the process alive. When one stage fails the others still
finish (their markers are written, so a rerun skips them); then the first failure is raised.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    summary: dict | None
    seconds: float
    error: BaseException | None = None


def fits_together(needs: Mapping[str, Mapping[str, float]], available: Mapping[str, float]) -> str | None:
    """None when the cluster's resources hold every stage's at once, else why not (e.g. "CPU 4 > 2")."""
    total: dict[str, float] = {}
    for need in needs.values():
        for res, amount in need.items():
            total[res] = total.get(res, 0.0) + amount
    short = [f"{res} {amount:g} > {available.get(res, 0.0):g}" for res, amount in sorted(total.items())
             if amount > available.get(res, 0.0)]
    return "; ".join(short) or None


def run_together(bodies: Mapping[str, Callable[[], dict]],
                 aborts: Mapping[str, Callable[[BaseException], None]] | None = None,
                 poll_seconds: float = 0.5) -> dict[str, Outcome]:
    """Run every body in its own thread and wait for all: {name: Outcome} (a body's exception is its Outcome's
    `error`). An exception in the waiting thread (KeyboardInterrupt, Terminated) calls `aborts[name](exc)` for each
    body not finished yet, then propagates."""
    outcomes: dict[str, Outcome] = {}

    def target(name: str, fn: Callable[[], dict]) -> None:
        t0 = time.perf_counter()
        try:
            outcomes[name] = Outcome(fn(), time.perf_counter() - t0)
        except BaseException as e:  # noqa: BLE001 - reported through the Outcome, raised by the caller
            outcomes[name] = Outcome(None, time.perf_counter() - t0, e)

    threads = [threading.Thread(target=target, args=(name, fn), name=f"stage-{name}", daemon=True)
               for name, fn in bodies.items()]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():  # joined with a timeout so a signal is handled within poll_seconds
                t.join(poll_seconds)
    except BaseException as exc:
        for name in bodies:
            if name not in outcomes and aborts and name in aborts:
                try:
                    aborts[name](exc)
                except Exception:  # noqa: BLE001 - the interrupt is the error to report
                    logger.exception("could not end stage %s after %r", name, exc)
        raise
    return outcomes
