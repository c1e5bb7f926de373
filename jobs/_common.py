"""What every job entrypoint shares: --config/--set parsing, validation before Ray, exit codes."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from kd.config import ConfigError, load_config
from kd.data import FormatError


def run_job(doc: str, config_cls, body: Callable, argv=None) -> int:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (dotted path), repeatable")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        body(cfg)
    except FormatError as e:  # bad input found by the validation pass: the message names file and line
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
