"""Ray Data's own progress output, kept for `--verbose`.

Ray Data prints a 10-line progress block per dataset every 10 s when stdout is not a terminal (CI, `ray job submit`
logs), and a set of bars otherwise; jobs keep it for `--verbose` only (`quiet_ray_data`) and report each long stage
through one `kd.progress.Progress` line instead.
"""
from __future__ import annotations

_verbose = False


def set_verbose(on: bool) -> None:
    """`--verbose` (jobs/_common.run_job): keep Ray Data's own progress bars and execution log lines."""
    global _verbose
    _verbose = bool(on)


def is_verbose() -> bool:
    return _verbose


def quiet_ray_data() -> None:
    """Turn Ray Data's progress bars / non-terminal progress blocks and its per-dataset "Starting execution" lines off
    in this (driver) process unless `--verbose`; called by every stage before it builds a dataset."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = _verbose
    ctx.print_on_execution_start = _verbose


