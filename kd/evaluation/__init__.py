"""Evaluation of rankers: dense retrieval, re-ranking, passage → document aggregation, efficiency (Ray/MLflow-free).

Tasks (driven by jobs/evaluate.py through kd.runtime.evaluation, or called directly), one module each:

* `run`        rerank.py     an existing TREC run as it is (baselines).
* `dense`      dense.py      a BEIR folder: the corpus encoded in fixed, length-sorted batches (`plan_batches`) and
                             written as embedding shards (shards.py) by the encoders, the judged queries encoded by
                             the (query) model and searched shard by shard, exact inner product with an exact top-k
                             merge (search.py; HNSW optional). The documents may come from another encoder (seed
                             003: the teacher's index with a distilled query encoder).
* `rerank`     rerank.py     a first-stage TREC run + texts: the model re-scores each query's top-k candidates (any
                             architecture).
* `document`   document.py   documents split into word windows; passage scores aggregated to documents (MaxP, FirstP,
                             SumP, AvgP, mean of the top-k passages).
* `efficiency` efficiency.py queries/s and latency p50/p95 of query encoding and re-ranking per batch size, after
                             warm-up.

Around them: inputs.py (each task's inputs read and checked once per job, by `TaskRunner.preflight`), checks.py
(the id and overlap checks, `EvaluationError`), encoding.py (batch plan, autocast, the in-process corpus encoder),
shards.py (corpus embeddings on disk: pieces written by the encoders, read back as shards), search.py (per-shard
exact inner-product top-k, exact merge), results.py (`TaskResult`, metrics, results.json, `result_key`), report.py
(table, plot), runner.py (`TaskRunner`, `run_all`). Models load through kd.models.loader (`load_ranker`, re-exported
here).

Determinism: corpus embeddings are computed batch by batch from a plan that depends only on the texts (sorted by
character length, ties by position), and are written keyed by corpus position, so any number of workers that run
the same plan produce the same embeddings; the sharded search gives the run of one flat index over them. Rankings
are ordered by score, ties by document id descending (trec_eval's rule, as everywhere in kd).
"""
from __future__ import annotations

from kd.evaluation.checks import EvaluationError, check_corpus, check_overlap, check_run_ids, top_candidates
from kd.evaluation.dense import build_index, dense_task, doc_encoder_spec, search_corpus
from kd.evaluation.document import aggregate, document_rerank, document_task, split_passages
from kd.evaluation.efficiency import (
    OtherLoad,
    efficiency_task,
    latency_stats,
    machine_info,
    measure_efficiency,
    time_calls,
)
from kd.evaluation.encoding import (
    CorpusEncoder,
    LocalCorpusEncoder,
    autocast,
    encode_batch,
    encode_plan,
    encode_texts,
    is_single_vector,
    plan_batches,
)
from kd.evaluation.inputs import PREPARE, BeirInputs, DocumentInputs, EfficiencyInputs, RerankInputs, RunInputs
from kd.evaluation.report import TABLE_METRICS, format_table, plot_tradeoff
from kd.evaluation.rerank import baseline_task, rerank, rerank_task, score_pairs
from kd.evaluation.results import TaskResult, eval_metrics, result_key, write_json
from kd.evaluation.runner import TaskRunner, run_all
from kd.evaluation.search import merge_topk, search_index, search_shards, shard_topk, tie_ranks, to_run
from kd.evaluation.shards import PieceWriter, ShardSet, write_piece
from kd.models.loader import (
    MODEL_URI_PREFIXES,
    is_model_uri,
    load_ranker,
    load_spec,
    pick_device,
    sentence_transformers_max_length,
)

__all__ = [
    "MODEL_URI_PREFIXES", "PREPARE", "TABLE_METRICS", "BeirInputs", "CorpusEncoder", "DocumentInputs",
    "EfficiencyInputs", "EvaluationError", "LocalCorpusEncoder", "OtherLoad", "RerankInputs", "RunInputs",
    "PieceWriter", "ShardSet", "TaskResult", "TaskRunner", "aggregate", "autocast", "baseline_task", "build_index",
    "check_corpus", "check_overlap", "check_run_ids", "dense_task", "doc_encoder_spec", "document_rerank",
    "document_task", "efficiency_task", "encode_batch", "encode_plan", "encode_texts", "eval_metrics", "format_table",
    "is_model_uri", "is_single_vector", "latency_stats", "load_ranker", "load_spec", "machine_info",
    "measure_efficiency", "merge_topk", "pick_device", "plan_batches", "plot_tradeoff", "rerank", "rerank_task",
    "result_key", "run_all", "score_pairs", "search_corpus", "search_index", "search_shards",
    "sentence_transformers_max_length", "shard_topk", "split_passages", "tie_ranks", "time_calls", "to_run",
    "top_candidates", "write_json", "write_piece",
]
