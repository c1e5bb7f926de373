"""Sweep distillation configs with Ray Tune (ASHA on the validation metric); register the best as `champion`.

    python -m jobs.sweep --config sweeps/<x>.yaml [--set key=value ...]

Each trial runs the same path as jobs.distill (a TorchTrainer inside the trial) as an MLflow run nested under the
sweep's parent run, which gets a summary table. The best trial's model becomes a new version of registry.name with
the alias (default `champion`): `kd.load("models:/<name>@champion")`. Rerunning the same command after an
interruption resumes the sweep (Tuner.restore) without redoing finished trials; exit code 130 while unfinished.
"""
from __future__ import annotations

import json
import sys

from jobs._common import run_job
from kd.configs.sweep import SweepConfig


def main(argv=None) -> int:
    outcome = {"code": 0}

    def run(cfg: SweepConfig) -> None:
        from kd.configs.errors import ConfigError
        from kd.runtime.sweep import run_sweep

        try:
            out = run_sweep(cfg)
        except ConfigError as e:  # found once the cluster / the existing sweep folder are known
            print(f"error: {e}", file=sys.stderr)
            outcome["code"] = 2
            return
        shown = {k: v for k, v in out.items() if k != "results"}
        print(json.dumps(shown, indent=2, default=str))
        if out.get("interrupted"):
            print(f"sweep {cfg.name} interrupted: rerun the same command to resume", file=sys.stderr)
            outcome["code"] = 130

    code = run_job(__doc__, SweepConfig, run, argv)
    return code or outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
