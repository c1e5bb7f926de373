"""The `document` task: documents split into word windows, each passage scored, passage scores aggregated to a
document score (MaxP, FirstP, SumP, AvgP, mean of the top-k passages); one result per aggregation.

First stage: the task's `run`, or BM25 (bm25s) over the BEIR corpus, retrieved on first use and kept for the job.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kd.data.formats import Run
from kd.eval_models import ensemble_info
from kd.evaluation.checks import check_overlap, top_candidates
from kd.evaluation.inputs import DocumentInputs
from kd.evaluation.rerank import score_pairs
from kd.evaluation.results import TaskResult, eval_metrics
from kd.models import Ranker

if TYPE_CHECKING:  # pragma: no cover
    from kd.evaluation.runner import TaskRunner


def split_passages(text: str, window: int, stride: int, max_passages: int | None = None,
                   prefix: str = "") -> list[str]:
    """Word windows: passage i holds words [i·stride, i·stride + window); the last one reaches the end of the
    text (no window starts after a window that already did). `prefix` (e.g. the title) goes before each passage."""
    if window < 1 or stride < 1 or stride > window:
        raise ValueError(f"need 1 <= stride <= window, got window={window} stride={stride}")
    words = text.split()
    head = f"{prefix} " if prefix.strip() else ""
    if not words:
        return [prefix.strip()] if prefix.strip() else [""]
    out = []
    for start in range(0, len(words), stride):
        out.append(head + " ".join(words[start : start + window]))
        if start + window >= len(words) or (max_passages and len(out) >= max_passages):
            break
    return out


def aggregate(scores: Sequence[float], how: str) -> float:
    """Passage scores (document order) → a document score: maxp, firstp, sump, avgp, top<k> (mean of the k best)."""
    if len(scores) == 0:
        raise ValueError("a document without passages cannot be scored")
    how = how.lower()
    if how == "maxp":
        return float(max(scores))
    if how == "firstp":
        return float(scores[0])
    if how == "sump":
        return float(sum(scores))
    if how == "avgp":
        return float(sum(scores) / len(scores))
    if how.startswith("top") and how[3:].isdigit() and int(how[3:]) >= 1:
        best = sorted(scores, reverse=True)[: int(how[3:])]
        return float(sum(best) / len(best))
    raise ValueError(f"unknown aggregation {how!r}; known: maxp, firstp, sump, avgp, top<k>")


def document_rerank(model: Ranker, candidates: Mapping[str, Sequence[str]], queries: Mapping[str, str],
                    corpus: Mapping[str, Mapping[str, str]], *, window: int, stride: int,
                    aggregations: Sequence[str], max_passages: int | None = None, use_title: bool = True,
                    batch_size: int = 64, precision: str = "auto",
                    show_progress: bool = False) -> tuple[dict[str, Run], dict]:
    """Score every passage of every candidate document once, then aggregate per document for each aggregation.

    Returns ({aggregation: run}, stats) with stats = documents, passages, passages per document.
    """
    split: dict[str, list[str]] = {}
    for docs in candidates.values():
        for d in docs:
            if d not in split:
                doc = corpus[d]
                title = (doc.get("title") or "") if use_title else ""
                split[d] = split_passages(doc.get("text") or "", window, stride, max_passages, prefix=title)
    pairs = [(q, d, p) for q, docs in candidates.items() for d in docs for p in range(len(split[d]))]
    scores = score_pairs(model, [queries[q] for q, _, _ in pairs], [split[d][p] for _, d, p in pairs],
                         batch_size=batch_size, precision=precision, show_progress=show_progress)
    per_doc: dict[tuple[str, str], list[float]] = {}
    for (q, d, p), s in zip(pairs, scores.tolist()):
        per_doc.setdefault((q, d), []).append(float(s))  # passages arrive in document order
    runs = {how: {} for how in aggregations}
    for (q, d), ss in per_doc.items():
        for how in aggregations:
            runs[how].setdefault(q, {})[d] = aggregate(ss, how)
    n_passages = [len(v) for v in split.values()]
    stats = {"documents": len(split), "passages": int(sum(n_passages)),
             "passages_per_document": float(np.mean(n_passages)) if n_passages else 0.0, "pairs": len(pairs)}
    return runs, stats


def bm25_candidates(runner: "TaskRunner", task, inputs: DocumentInputs) -> tuple[dict[str, list[str]], str]:
    """The BM25 first stage of a document task without `run`: (each judged query's top-k, its description)."""
    from kd.data import bm25_search

    key = ("bm25", str(Path(task.beir).resolve()), task.split, task.top_k)
    first = runner.memo(key, lambda: bm25_search(inputs.ds.corpus, inputs.queries, task.top_k, show_progress=False))
    source = f"BM25 over {Path(task.beir) / 'corpus.jsonl'}"
    qids = check_overlap(first, inputs.ds.qrels, source, inputs.qrels_source)
    return top_candidates(first, qids, task.top_k), source


def document_task(runner: "TaskRunner", task, spec, model: Ranker, inputs: DocumentInputs) -> list[TaskResult]:
    cfg = runner.cfg
    t0 = time.perf_counter()
    cands, source = inputs.candidates, inputs.first_stage
    if cands is None:
        cands, source = bm25_candidates(runner, task, inputs)
    runs, stats = document_rerank(model, cands, inputs.queries, inputs.ds.corpus, window=task.window,
                                  stride=task.stride, aggregations=task.aggregations, max_passages=task.max_passages,
                                  use_title=task.use_title, batch_size=cfg.compute.batch_size,
                                  precision=cfg.compute.precision, show_progress=cfg.show_progress)
    results = []
    for how, run in runs.items():
        metrics, res = eval_metrics(run, inputs.ds.qrels, cfg.metrics_for(task), cfg.relevance_for(task),
                                    run_source=f"{how} run of {spec.name}", qrels_source=inputs.qrels_source)
        info = {"n_queries": res.n_queries, "aggregation": how, "window_words": task.window,
                "stride_words": task.stride, "top_k": task.top_k, "first_stage": source,
                "relevance_level": cfg.relevance_for(task), **stats, **ensemble_info(model),
                "seconds": time.perf_counter() - t0, **runner.precision_info()}
        results.append(runner.write(TaskResult(spec.name, "document", f"{task.name}-{how}", metrics, info), run))
    return results
