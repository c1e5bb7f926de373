"""End-to-end pipeline: mine triples → train teachers (if none are given) → score with the ensemble → distil the
students → evaluate → register. Each stage skips when its output exists; each is an MLflow run under one parent.

    python -m jobs.pipeline --config configs/<x>.yaml [--set key=value ...]

The whole config (every stage's job config) is validated before any Ray work. Same command under
`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m jobs.pipeline --config ...`.
"""
from __future__ import annotations

import sys

from jobs._common import run_job
from kd.configs.pipeline import PipelineConfig


def main(argv=None) -> int:
    def run(cfg: PipelineConfig) -> None:
        from kd.runtime.pipeline import run_pipeline

        run_pipeline(cfg)

    return run_job(__doc__, PipelineConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
