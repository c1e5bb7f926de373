"""A first-stage TREC run, evaluated as it is (the `run` task: baselines) or re-scored by a model (the `rerank`
task: each query's top-k candidates, any architecture)."""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kd.data.formats import Run
from kd.eval_models import ensemble_info
from kd.evaluation.encoding import autocast
from kd.evaluation.inputs import RerankInputs, RunInputs
from kd.evaluation.results import TaskResult, eval_metrics
from kd.models import Ranker

if TYPE_CHECKING:  # pragma: no cover
    from kd.evaluation.runner import TaskRunner


def score_pairs(model: Ranker, queries: Sequence[str], passages: Sequence[str], *, batch_size: int = 64,
                precision: str = "auto", show_progress: bool = False) -> np.ndarray:
    """Scores for aligned (query, passage) pairs, float32, through `Ranker.predict` (length-sorted batches; a
    bi-encoder encodes each distinct query and passage once and scores by inner product)."""
    if len(queries) != len(passages):
        raise ValueError(f"got {len(queries)} queries but {len(passages)} passages")
    if len(queries) == 0:
        raise ValueError("no (query, passage) pairs to score")
    device = model.device
    with autocast(device, precision):
        return model.predict(list(queries), list(passages), batch_size=batch_size,
                             show_progress=show_progress).numpy().astype(np.float32)


def rerank(model: Ranker, candidates: Mapping[str, Sequence[str]], queries: Mapping[str, str],
           passages: Mapping[str, str], *, batch_size: int = 64, precision: str = "auto",
           show_progress: bool = False) -> Run:
    """Re-score `candidates` ({qid: [docid, ...]}) with the model → a run."""
    pairs = [(q, d) for q, docs in candidates.items() for d in docs]
    scores = score_pairs(model, [queries[q] for q, _ in pairs], [passages[d] for _, d in pairs],
                         batch_size=batch_size, precision=precision, show_progress=show_progress)
    run: Run = {}
    for (q, d), s in zip(pairs, scores.tolist()):
        run.setdefault(q, {})[d] = float(s)
    return run


def baseline_task(runner: "TaskRunner", task, inputs: RunInputs) -> TaskResult:
    """`run` task: evaluate a TREC run file as it is."""
    cfg = runner.cfg
    t0 = time.perf_counter()
    metrics, res = eval_metrics(inputs.run, inputs.qrels, cfg.metrics_for(task), cfg.relevance_for(task),
                                run_source=task.run, qrels_source=task.qrels)
    info = {"n_queries": res.n_queries, "missing_queries": len(res.missing_queries),
            "relevance_level": cfg.relevance_for(task), "run": task.run, "qrels": task.qrels,
            "seconds": time.perf_counter() - t0}
    return runner.write(TaskResult(None, "run", task.name, metrics, info), None)


def rerank_task(runner: "TaskRunner", task, spec, model: Ranker, inputs: RerankInputs) -> TaskResult:
    cfg = runner.cfg
    t0 = time.perf_counter()
    cands = inputs.candidates
    new = rerank(model, cands, inputs.queries, inputs.passages, batch_size=cfg.compute.batch_size,
                 precision=cfg.compute.precision, show_progress=cfg.show_progress)
    metrics, res = eval_metrics(new, inputs.qrels, cfg.metrics_for(task), cfg.relevance_for(task),
                                run_source=task.run, qrels_source=task.qrels)
    info = {"n_queries": res.n_queries, "pairs": sum(len(v) for v in cands.values()), "top_k": task.top_k,
            "relevance_level": cfg.relevance_for(task), "first_stage": task.run,
            "architecture": model.architecture, **ensemble_info(model), "seconds": time.perf_counter() - t0,
            **runner.precision_info()}
    return runner.write(TaskResult(spec.name, "rerank", task.name, metrics, info), new)
