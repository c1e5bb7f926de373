"""Score id triples with a teacher ensemble on Ray Data → the published Margin-MSE teacher file + member scores.

    python -m jobs.score_teachers --config configs/score_teachers_scifact.yaml [--set key=value ...]

The same command works under `ray job submit -- python -m jobs.score_teachers ...`.
"""
from __future__ import annotations

import sys

from jobs._common import run_job
from kd.config import ScoreTeachersConfig


def main(argv=None) -> int:
    def run(cfg: ScoreTeachersConfig) -> None:
        from kd.runtime.scoring import score_teachers

        summary = score_teachers(cfg)
        print(f"scored {summary['triples']} triples ({summary['skipped']} skipped) → {summary['output']}")

    return run_job(__doc__, ScoreTeachersConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
