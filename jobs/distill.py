"""Distil a student on Ray Train + DeepSpeed; track in MLflow; register the best model.

    python -m jobs.distill --config configs/<x>.yaml [--set key=value ...]

Same command under `ray job submit -- python -m jobs.distill ...`. Rerunning with the same run.name resumes.
"""
from __future__ import annotations

import json
import sys

from jobs._common import run_job
from kd.configs.distill import DistillConfig


def main(argv=None) -> int:
    def run(cfg: DistillConfig) -> None:
        from kd.runtime.distill import distill

        out = distill(cfg)
        print(json.dumps(out, indent=2, default=str))

    return run_job(__doc__, DistillConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
