"""Teacher-ensemble scoring of training triples on Ray Data (jobs/score_teachers.py).

Driver: checks every member can score (kd.teachers.check_member) and validates and joins id triples with text
(every unknown id fails or is counted) before Ray starts, cuts the rows into shards, and for each shard not yet on
disk runs a Ray Data pipeline whose `map_batches` actor pool (`ActorPoolStrategy`, `num_gpus` per actor on GPU
clusters) builds the ensemble once per actor (a BM25 member indexes its corpus statistics then) and scores windows
of rows, length-sorted inside each window. Each shard holds only raw member scores, written atomically as
    shards/part-NNNNN.parquet  qid, pos_pid, neg_pid + every member's raw <name>_pos / <name>_neg (float32)
and a rerun skips finished shards. A zscore combination needs statistics over every row, so the combination is
made at assembly (kd/teachers/scores.py): the shards become `members.parquet`, the combined scores
`teacher_scores.tsv` (the published Margin-MSE format) and `ensemble/` (members + fitted combination). The shards
do not depend on `combine` or the weights: rerunning with another combination recombines without rescoring. Counts,
throughput, teacher identities and the fitted combination go to summary.json and MLflow.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kd.configs.errors import ConfigError
from kd.configs.score_teachers import ScoreTeachersConfig
from kd.configs.base import to_flat_dict
from kd.data.join import JoinedTriple, JoinStats, join_triples, load_passages, load_queries
from kd.progress import Progress
from kd.runtime.progress import quiet_ray_data
from kd.teachers.checks import check_member
from kd.teachers.scores import ENSEMBLE_DIR, MEMBERS_FILE, SCORES_FILE, MemberScores, with_metadata, \
    write_combined, write_members

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
FORMAT = 2  # shards of raw member scores only (format 1 also held a per-shard mean .tsv)


class TeacherScorer:
    """Ray Data callable class: one teacher ensemble per actor, built once (a BM25 member tokenises its whole
    corpus here, in every actor: 0.9 s for the quickstart's 3.4k passages, ≈ 0.3 ms per passage, so ~45 min for
    MS MARCO's 8.8M); scores a window of (query, pos, neg) rows with every member."""

    def __init__(self, teachers: list[dict], batch_size: int, use_gpu: bool):
        from kd.teachers import TeacherEnsemble, load_member

        self.names = [t["name"] for t in teachers]
        self.ensemble = TeacherEnsemble([load_member(t) for t in teachers], names=self.names)
        self.device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        self.ensemble.to(self.device)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        queries = [str(q) for q in batch["query"]]
        n = len(queries)
        passages = [str(p) for p in batch["pos"]] + [str(p) for p in batch["neg"]]
        # bf16 on GPU, fp32 on CPU; `predict` sorts the 2n pairs by length so padding stays small
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            members = self.ensemble.predict_members(queries + queries, passages, batch_size=self.batch_size)
        members = members.numpy().astype(np.float32)
        out = {"row": batch["row"]}
        for i, name in enumerate(self.names):
            out[f"{name}_pos"] = members[i, :n]
            out[f"{name}_neg"] = members[i, n:]
        return out


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


def _check_manifest(out: Path, fp: dict) -> None:
    manifest = out / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old != fp:
            changed = sorted(k for k in fp if old.get(k) != fp[k])
            raise ValueError(
                f"{out} holds shards of a different scoring run (changed: {changed}); "
                "use another output_dir or delete it to start over"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(fp, indent=2) + "\n")


def _chunks(it: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(it, size)):
        yield chunk


def _shard_path(out: Path, i: int) -> Path:
    return out / "shards" / f"part-{i:05d}.parquet"


def _score_shard(rows: list[JoinedTriple], first_row: int, cfg: ScoreTeachersConfig,
                 progress: Progress) -> dict[str, np.ndarray]:
    import ray

    table = pa.table({
        "row": np.arange(first_row, first_row + len(rows), dtype=np.int64),
        "query": [r.query for r in rows], "pos": [r.pos for r in rows], "neg": [r.neg for r in rows],
    })
    ds = ray.data.from_arrow(table).map_batches(
        TeacherScorer,
        fn_constructor_kwargs={
            "teachers": [t.model_dump() for t in cfg.teachers], "batch_size": cfg.batch_size,
            "use_gpu": cfg.gpus_per_actor > 0,
        },
        batch_size=cfg.window,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor or None,
    )
    parts = []
    for part in ds.iter_batches(batch_size=None, batch_format="numpy"):
        parts.append(part)
        progress.update(len(part["row"]))
    result = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(result["row"], kind="stable")
    result = {k: v[order] for k, v in result.items()}
    if len(result["row"]) != len(rows) or result["row"][0] != first_row:
        raise RuntimeError(f"scoring returned {len(result['row'])} rows for a shard of {len(rows)}")
    return result


def _write_shard(out: Path, i: int, rows: list[JoinedTriple], scored: dict[str, np.ndarray], names: list[str]) -> None:
    """ids + raw member scores; written to a temporary name and renamed, so an existing shard is a finished one."""
    path = _shard_path(out, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"qid": [r.qid for r in rows], "pos_pid": [r.pos_pid for r in rows], "neg_pid": [r.neg_pid for r in rows]}
    for n in names:
        columns[f"{n}_pos"], columns[f"{n}_neg"] = scored[f"{n}_pos"], scored[f"{n}_neg"]
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, path)


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


def score_teachers(cfg: ScoreTeachersConfig) -> dict:
    """Run the scoring job; returns the summary (also written to output_dir/summary.json and MLflow)."""
    from kd.runtime.tracking import log_params, mlflow_run

    _check_members(cfg)
    out = Path(cfg.output_dir)
    queries = load_queries(cfg.text.queries, strict=cfg.strict)
    passages = load_passages(cfg.text.passages, strict=cfg.strict, use_title=cfg.text.use_title,
                             show_progress=cfg.show_progress)

    def joined(stats: JoinStats) -> Iterator[JoinedTriple]:
        return join_triples(cfg.input, queries, passages, strict=cfg.strict, stats=stats, use_title=cfg.text.use_title)

    # validation pass before any Ray work: every bad line / unknown id fails (strict) or is counted (lenient) now
    check = JoinStats()
    total = sum(1 for _ in joined(check))
    if total == 0:
        raise ValueError(f"{cfg.input}: no triple could be joined with text ({check.summary()})")
    fingerprint = _fingerprint(cfg)
    _check_manifest(out, fingerprint)
    n_shards = -(-total // cfg.shard_size)
    names = [t.name for t in cfg.teachers]
    done = {i for i in range(n_shards) if _shard_path(out, i).exists()}
    if len(done) < n_shards:  # a rerun that only recombines finished shards needs no Ray
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
        reused = sum(min(cfg.shard_size, total - i * cfg.shard_size) for i in done)
        progress = Progress("teacher scoring", total, unit="triples", done=reused, enabled=cfg.show_progress)
        scored_now, seconds = 0, 0.0
        stats = JoinStats()
        for i, rows in enumerate(_chunks(joined(stats), cfg.shard_size)):
            if i not in done:
                start = time.perf_counter()
                scored = _score_shard(rows, i * cfg.shard_size, cfg, progress)
                _write_shard(out, i, rows, scored, names)
                seconds += time.perf_counter() - start
                scored_now += len(rows)
        progress.close()
        combination = _assemble(out, n_shards, cfg)
        summary = {
            "triples": total, "input_lines": stats.rows, "skipped": stats.skipped,
            "missing_query": stats.missing_query, "missing_passage": stats.missing_passage,
            "bad_lines": stats.read.n_skipped, "duplicates": stats.duplicates,
            "scored_now": scored_now, "reused_from_shards": reused, "shards": n_shards,
            "pairs_per_second": (2 * scored_now / seconds) if seconds else None,
            "seconds": seconds, "teachers": [t.model_dump() for t in cfg.teachers],
            "combination": combination.to_dict(),
            "output": str(out / SCORES_FILE), "members": str(out / MEMBERS_FILE),
            "ensemble": str(out / ENSEMBLE_DIR),
        }
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if run is not None:
            import mlflow

            log_params(combination.params())
            mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
            for t in cfg.teachers:
                mlflow.set_tag(f"kd.teacher.{t.name}", f"{t.kind}:{t.corpus if t.kind == 'bm25' else t.path}")
            mlflow.log_artifact(str(out / SUMMARY_FILE))
            mlflow.log_artifacts(str(out / ENSEMBLE_DIR), ENSEMBLE_DIR)
            summary["mlflow_run_id"] = run.info.run_id
    logger.info("teacher scoring: %s", json.dumps({k: v for k, v in summary.items() if k != "teachers"}))
    return summary
