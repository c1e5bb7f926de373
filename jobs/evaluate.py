"""Evaluate rankers: dense retrieval (BEIR), re-ranking of a TREC run, passage → document aggregation, efficiency.

    python -m jobs.evaluate --config configs/eval_scifact_dense.yaml [--set key=value ...]

Tasks and models are listed in the config (kd.configs.EvalConfig). Every (model, dataset) result goes to MLflow
(`mlflow.experiment`), to <output_dir>/<model>/<dataset>.{trec,json} and <output_dir>/results.json; a table is
printed at the end, and `plot:` renders the efficiency-effectiveness PNG from the experiment's runs.
The same command works under `ray job submit -- python -m jobs.evaluate ...`.
"""
from __future__ import annotations

import sys

from jobs._common import run_job
from kd.configs.evaluate import EvalConfig


def main(argv=None) -> int:
    def run(cfg: EvalConfig) -> None:
        from kd.runtime.evaluation import evaluate, format_table

        def progress(result) -> None:
            shown = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if not k.startswith("eff_"))
            print(f"[{result.task}] {result.model or 'baseline'} / {result.dataset}: {shown or 'done'}", flush=True)

        results = evaluate(cfg, on_result=progress)
        if results:
            print()
            print(format_table(results))
            print(f"\nresults: {cfg.output_dir}/results.json")
        if cfg.plot is not None and cfg.plot.enabled and cfg.mlflow.enabled:
            print(f"plot: {cfg.plot.output}")

    return run_job(__doc__, EvalConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
