"""Score id triples with a teacher ensemble on Ray Data → the published Margin-MSE teacher file + member scores.

    python -m jobs.score_teachers --config configs/score_teachers_scifact.yaml [--set key=value ...]

Members are cross-encoders, bi-encoders or BM25 (`teachers:`, each with a `weight`); `combine: mean | zscore` makes
their one teacher score. Writes output_dir/members.parquet (every member's raw scores), teacher_scores.tsv (the
combined scores), ensemble/ (members + fitted combination, loadable by kd.teachers.load_ensemble and evaluation)
and summary.json. Recombine without rescoring: `kd teachers combine --members <output_dir>/members.parquet ...`.
The same command works under `ray job submit -- python -m jobs.score_teachers ...`.
"""
from __future__ import annotations

import sys

from jobs._common import run_job
from kd.configs.score_teachers import ScoreTeachersConfig


def main(argv=None) -> int:
    def run(cfg: ScoreTeachersConfig) -> None:
        from kd.runtime.scoring import score_teachers
        from kd.teachers.combine import Combination

        summary = score_teachers(cfg)
        combination = Combination.from_dict(summary["combination"]).describe()
        print(f"scored {summary['triples']} triples ({summary['skipped']} skipped), {combination} → "
              f"{summary['output']}")

    return run_job(__doc__, ScoreTeachersConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
