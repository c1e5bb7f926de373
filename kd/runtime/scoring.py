"""Teacher-ensemble scoring of training triples on Ray Data (jobs/score_teachers.py).

Driver: checks every member can score (kd.teachers.check_member), then one validation pass before Ray starts reads
every line of the id triples and checks every id against the text sources (kd.data.id_rows: the join's own reader,
errors and counts; no text built): a bad line or unknown id fails naming file and line, or is counted (lenient).
The same pass writes the ids of every shard not yet on disk to the plan (kd/runtime/scoring_plan.py: shard i = rows
[i·shard_size, (i+1)·shard_size), windows of `window` rows from each shard's start), one window in memory at a time.
Then ONE Ray Data pipeline scores every pending window (kd/runtime/scoring_stream.py): a `map_batches` actor pool
(`ActorPoolStrategy`, `num_gpus` per actor on GPU clusters) whose actors build the ensemble once each (a BM25 member
indexes its corpus statistics then; kd/runtime/scoring_actor.py), join a window's ids with text and score it with
every member, length-sorted inside the window; the driver writes each shard as its last window arrives, so it holds
one shard at most. Each shard holds only raw member scores, written atomically as
    shards/part-NNNNN.parquet  qid, pos_pid, neg_pid + every member's raw <name>_pos / <name>_neg (float32)
and a rerun skips finished shards. A zscore combination needs statistics over every row, so the combination is
made at assembly (kd/teachers/scores.py): the shards become `members.parquet`, the combined scores
`teacher_scores.tsv` (the published Margin-MSE format) and `ensemble/` (members + fitted combination). The shards
do not depend on `combine` or the weights: rerunning with another combination recombines without rescoring. Counts,
throughput, time to the first scored row, ensemble loads per actor, teacher identities and the fitted combination go
to summary.json and MLflow. output_dir must be visible to the actors (shared storage on a multi-node cluster, like
the text sources a memory-mapped TsvTextIndex reads): they read the plan there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kd.configs.errors import ConfigError
from kd.configs.score_teachers import ScoreTeachersConfig
from kd.configs.base import to_flat_dict
from kd.data.id_rows import checked_id_triples
from kd.data.join import JoinStats, load_passages, load_queries
from kd.progress import Progress
from kd.runtime.progress import quiet_ray_data
from kd.runtime.scoring_plan import remove_plan, write_plan
from kd.runtime.scoring_stream import StreamResult, score_pending, shard_path as _shard_path
from kd.teachers.checks import check_member
from kd.teachers.scores import ENSEMBLE_DIR, MEMBERS_FILE, SCORES_FILE, MemberScores, with_metadata, \
    write_combined, write_members

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
FORMAT = 2  # shards of raw member scores only (format 1 also held a per-shard mean .tsv)


def _member_fingerprint(spec: dict) -> dict:
    """What a member's raw scores depend on: its spec but the weight (a combination matter), and a bm25 corpus's
    size and mtime."""
    out = {k: v for k, v in spec.items() if k != "weight"}
    if spec["kind"] == "bm25":
        st = os.stat(spec["corpus"])
        out.update(corpus=str(Path(spec["corpus"]).resolve()), corpus_size=st.st_size, corpus_mtime=int(st.st_mtime))
    return out


def _fingerprint(cfg: ScoreTeachersConfig) -> dict:
    """What the shards depend on (not `combine` or the weights: they only change the assembly)."""
    st = os.stat(cfg.input)
    return {
        "format": FORMAT,
        "input": str(Path(cfg.input).resolve()), "input_size": st.st_size, "input_mtime": int(st.st_mtime),
        "shard_size": cfg.shard_size, "teachers": [_member_fingerprint(t.model_dump()) for t in cfg.teachers],
        "queries": cfg.text.queries, "passages": cfg.text.passages, "use_title": cfg.text.use_title,
        "strict": cfg.strict,
    }


def _refuse_other_run(out: Path, fp: dict) -> None:
    """An output_dir holding another run's shards is refused (read-only: before the validation pass writes)."""
    manifest = out / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old != fp:
            changed = sorted(k for k in fp if old.get(k) != fp[k])
            raise ValueError(
                f"{out} holds shards of a different scoring run (changed: {changed}); "
                "use another output_dir or delete it to start over"
            )


def _write_manifest(out: Path, fp: dict) -> None:
    manifest = out / "manifest.json"
    if not manifest.exists():
        out.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(fp, indent=2) + "\n")


def _assemble(out: Path, n_shards: int, cfg: ScoreTeachersConfig):
    """members.parquet from the shards, then the combination fitted on all of it → teacher_scores.tsv + ensemble/."""
    specs = [t.model_dump() for t in cfg.teachers]
    table = with_metadata(pa.concat_tables([pq.read_table(_shard_path(out, i)) for i in range(n_shards)]),
                          specs, cfg.combine)
    write_members(out / MEMBERS_FILE, table)
    scores = MemberScores.from_table(table, str(out / MEMBERS_FILE))
    combination = scores.fit(cfg.combine)
    write_combined(out, scores, combination)
    return combination


def _check_members(cfg: ScoreTeachersConfig) -> None:
    """Every member can score (its folder holds a model of its kind, a bm25 corpus exists), before Ray starts."""
    for i, t in enumerate(cfg.teachers):
        try:
            check_member(t.model_dump())
        except ValueError as e:
            raise ConfigError(f"field teachers.{i}: {e}") from None


def _validate_and_plan(cfg: ScoreTeachersConfig, out: Path, queries, passages) -> tuple[int, list[int], JoinStats]:
    """The validation pass, before any Ray work: every line of the input is read and every id checked (a bad line or
    unknown id fails naming file and line, or is counted in lenient mode), no text is built, and the ids of every
    shard not yet on disk go to the plan. A failure leaves no plan (nor an output_dir it created)."""
    existed = out.exists()
    stats = JoinStats()
    try:
        rows = checked_id_triples(cfg.input, queries, passages, strict=cfg.strict, stats=stats,
                                  use_title=cfg.text.use_title)
        total, pending = write_plan(out, rows, cfg.shard_size, cfg.window, skip=lambda i: _shard_path(out, i).exists())
        if total == 0:
            raise ValueError(f"{cfg.input}: no triple could be joined with text ({stats.summary()})")
    except BaseException:
        remove_plan(out)
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return total, pending, stats


def score_teachers(cfg: ScoreTeachersConfig) -> dict:
    """Run the scoring job; returns the summary (also written to output_dir/summary.json and MLflow)."""
    from kd.runtime.tracking import log_params, mlflow_run

    job_start = time.perf_counter()
    _check_members(cfg)
    out = Path(cfg.output_dir)
    fingerprint = _fingerprint(cfg)
    _refuse_other_run(out, fingerprint)
    queries = load_queries(cfg.text.queries, strict=cfg.strict)
    passages = load_passages(cfg.text.passages, strict=cfg.strict, use_title=cfg.text.use_title,
                             show_progress=cfg.show_progress)
    total, pending, stats = _validate_and_plan(cfg, out, queries, passages)
    _write_manifest(out, fingerprint)
    n_shards = -(-total // cfg.shard_size)
    if pending:  # a rerun that only recombines finished shards needs no Ray
        from kd.runtime.cluster import ensure_ray

        ensure_ray()
        quiet_ray_data()

    # the same shards and combination → the same run name; a rerun reopens that MLflow run (another combination
    # of the same shards is another run: its params differ)
    combination_key = {"combine": cfg.combine, "weights": [t.weight for t in cfg.teachers]}
    run_id = hashlib.sha1(json.dumps([fingerprint, combination_key], sort_keys=True).encode()).hexdigest()[:10]
    with mlflow_run(cfg.mlflow, f"score-teachers-{run_id}", tags={"kd.job": "score_teachers"}, reuse=True) as run:
        if run is not None:
            log_params(to_flat_dict(cfg))
        reused = total - sum(min(cfg.shard_size, total - i * cfg.shard_size) for i in pending)
        progress = Progress("teacher scoring", total, unit="triples", done=reused, enabled=cfg.show_progress)
        streamed = StreamResult()
        if pending:
            import ray

            streamed = score_pending(cfg, out, pending, total, ray.put((queries, passages)), progress, job_start)
        progress.close()
        remove_plan(out)
        combination = _assemble(out, n_shards, cfg)
        summary = _summary(cfg, out, total, stats, streamed, reused, n_shards, combination)
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if run is not None:
            _log_run(cfg, out, summary, combination)
            summary["mlflow_run_id"] = run.info.run_id
    logger.info("teacher scoring: %s", json.dumps({k: v for k, v in summary.items() if k != "teachers"}))
    return summary


def _summary(cfg: ScoreTeachersConfig, out: Path, total: int, stats: JoinStats, streamed: StreamResult,
             reused: int, n_shards: int, combination) -> dict:
    seconds = streamed.seconds
    return {
        "triples": total, "input_lines": stats.rows, "skipped": stats.skipped,
        "missing_query": stats.missing_query, "missing_passage": stats.missing_passage,
        "bad_lines": stats.read.n_skipped, "duplicates": stats.duplicates,
        "scored_now": streamed.scored, "reused_from_shards": reused, "shards": n_shards,
        "pairs_per_second": (2 * streamed.scored / seconds) if seconds else None,
        "seconds": seconds, "first_row_seconds": streamed.first_row_seconds,
        "model_loads_per_actor": streamed.model_loads_per_actor, "actors": len(streamed.loads),
        "teachers": [t.model_dump() for t in cfg.teachers],
        "combination": combination.to_dict(),
        "output": str(out / SCORES_FILE), "members": str(out / MEMBERS_FILE),
        "ensemble": str(out / ENSEMBLE_DIR),
    }


def _log_run(cfg: ScoreTeachersConfig, out: Path, summary: dict, combination) -> None:
    import mlflow

    from kd.runtime.tracking import log_params

    log_params(combination.params())
    mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
    for t in cfg.teachers:
        mlflow.set_tag(f"kd.teacher.{t.name}", f"{t.kind}:{t.corpus if t.kind == 'bm25' else t.path}")
    mlflow.log_artifact(str(out / SUMMARY_FILE))
    mlflow.log_artifacts(str(out / ENSEMBLE_DIR), ENSEMBLE_DIR)
