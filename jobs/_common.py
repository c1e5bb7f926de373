"""What every job entrypoint shares: --config/--set parsing, validation before Ray, exit codes."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from kd.configs.errors import ConfigError
from kd.configs.loader import load_config
from kd.data import FormatError
from kd.runtime.interrupts import Terminated, exit_code, sigterm_raises


def run_job(doc: str, config_cls, body: Callable, argv=None) -> int:
    """Parse, validate, run `body(cfg)`; the exit status: 0, 2 for bad input, 130 on Ctrl+C, 143 on SIGTERM.

    An interrupt (Ctrl+C, or SIGTERM raised as `Terminated`) unwinds the job like an error, so its MLflow runs end
    KILLED, and prints one line instead of a traceback; whatever way the job ends, the local Ray it started is shut
    down, so a killed job leaves no Ray processes behind. Stages resume on a rerun of the same command."""
    try:
        with sigterm_raises():
            return _run_job(doc, config_cls, body, argv)
    except KeyboardInterrupt as e:
        how = "SIGTERM" if isinstance(e, Terminated) else "Ctrl+C"
        print(f"interrupted ({how}): stopped; rerun the same command to resume", file=sys.stderr, flush=True)
        return exit_code(e)
    finally:
        _shutdown_local_ray()


def _shutdown_local_ray() -> None:
    """Only a job that imported Ray can have started one: the others never import it for this."""
    if "ray" in sys.modules:
        from kd.runtime.cluster import shutdown_local_ray

        shutdown_local_ray()


def _run_job(doc: str, config_cls, body: Callable, argv=None) -> int:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (dotted path), repeatable")
    ap.add_argument("--verbose", action="store_true",
                    help="keep Ray Data's own progress bars/blocks (default: one calm progress line per long stage)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
        if getattr(cfg, "mlflow", None) is not None:  # a tracking server that does not answer: fail in seconds
            from kd.runtime.tracking import check_tracking_server

            check_tracking_server(cfg.mlflow)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from kd.runtime.progress import set_verbose

    set_verbose(args.verbose)
    try:
        body(cfg)
    except (FormatError, ConfigError) as e:  # found by a pre-Ray check: names the file and line, or the field
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
