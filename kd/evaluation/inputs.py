"""A job's task inputs, read and checked once: `PREPARE[task.task](runner, task)` per task kind, before any model work.

`TaskRunner.preflight` prepares every task of the config (so bad input fails in seconds, naming the file, line and
what is wrong) and keeps what it prepared; the task bodies (kd/evaluation/{rerank,dense,document,efficiency}.py)
consume those inputs and read no file again. Runs, qrels, texts and BEIR folders shared by several tasks are read
once too (the runner's caches). A BM25 first stage (a document task without `run`) is retrieval work, done by the
task on first use.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kd.data.formats import Qrels, Run
from kd.evaluation.checks import EvaluationError, check_overlap, check_run_ids, top_candidates

if TYPE_CHECKING:  # pragma: no cover
    from kd.evaluation.runner import TaskRunner


@dataclass
class RunInputs:
    """`run` task: a TREC run and its qrels, sharing at least one query."""

    run: Run
    qrels: Qrels


@dataclass
class RerankInputs:
    """`rerank` task: each shared query's top-k candidates of the first-stage run, all with text."""

    qrels: Qrels
    queries: Mapping[str, str]
    passages: Mapping[str, str]
    candidates: dict[str, list[str]]


@dataclass
class BeirInputs:
    """`dense` task: a BEIR split with documents, judgments and judged queries."""

    ds: Any  # kd.data.BeirDataset
    queries: dict[str, str]  # the judged queries
    qrels_source: str  # <beir>/qrels/<split>.tsv


@dataclass
class DocumentInputs(BeirInputs):
    """`document` task: a BEIR split and, with `run`, its checked candidates (None: BM25 retrieves them)."""

    candidates: dict[str, list[str]] | None = None
    first_stage: str | None = None


@dataclass
class EfficiencyInputs:
    """`efficiency` task: the query texts to encode (by id) and the (query, passage) pairs to re-rank."""

    queries: list[str]
    pairs: list[tuple[str, str]]


def _run_and_qrels(runner: "TaskRunner", task) -> tuple[Run, Qrels, list[str]]:
    """A task's `run` and `qrels` files and the query ids they share (none: EvaluationError naming both)."""
    run, qrels = runner.trec_run(task.run), runner.qrels(task.qrels)
    return run, qrels, check_overlap(run, qrels, task.run, task.qrels)


def prepare_run(runner: "TaskRunner", task) -> RunInputs:
    run, qrels, _ = _run_and_qrels(runner, task)
    return RunInputs(run, qrels)


def prepare_rerank(runner: "TaskRunner", task) -> RerankInputs:
    run, qrels, qids = _run_and_qrels(runner, task)
    cands = top_candidates(run, qids, task.top_k)
    queries, passages = runner.queries(task.queries), runner.passages(task.corpus, task.use_title)
    check_run_ids(task.run, cands, queries, passages, queries_source=task.queries, passages_source=task.corpus)
    return RerankInputs(qrels, queries, passages, cands)


def prepare_beir(runner: "TaskRunner", task) -> BeirInputs:
    ds = runner.beir(task.beir, task.split)
    qrels_source = Path(task.beir) / "qrels" / f"{task.split}.tsv"
    queries = ds.judged_queries()
    if not queries:
        raise EvaluationError(f"no query of {Path(task.beir) / 'queries.jsonl'} has judgments", path=qrels_source)
    return BeirInputs(ds, queries, str(qrels_source))


def prepare_document(runner: "TaskRunner", task) -> DocumentInputs:
    beir = prepare_beir(runner, task)
    if not task.run:
        return DocumentInputs(beir.ds, beir.queries, beir.qrels_source)
    ds, run = beir.ds, runner.trec_run(task.run)
    qids = check_overlap(run, ds.qrels, task.run, str(Path(task.beir) / "qrels"))
    cands = top_candidates(run, qids, task.top_k)
    check_run_ids(task.run, cands, ds.queries, ds.corpus, queries_source=str(Path(task.beir) / "queries.jsonl"),
                  passages_source=str(Path(task.beir) / "corpus.jsonl"))
    return DocumentInputs(ds, beir.queries, beir.qrels_source, cands, task.run)


def prepare_efficiency(runner: "TaskRunner", task) -> EfficiencyInputs:
    """With `run`: each query's first `rerank_depth` candidates; without: the first passages, cycled over queries."""
    queries = runner.queries(task.queries)
    passages = runner.passages(task.passages, task.use_title)
    qtexts = [queries[q] for q in sorted(queries)]
    if task.run:
        run = runner.trec_run(task.run)
        rq = [q for q in sorted(run) if q in queries]
        cands = top_candidates(run, rq, task.rerank_depth)
        check_run_ids(task.run, cands, queries, passages, queries_source=task.queries, passages_source=task.passages)
        pairs = [(queries[q], passages[d]) for q in rq for d in cands[q]]
    else:
        pids = list(passages.keys())[: max(len(qtexts), 1) * task.rerank_depth]
        pairs = [(qtexts[i % len(qtexts)], passages[p]) for i, p in enumerate(pids)]
    return EfficiencyInputs(qtexts, pairs)


PREPARE = {"run": prepare_run, "rerank": prepare_rerank, "dense": prepare_beir, "document": prepare_document,
           "efficiency": prepare_efficiency}
