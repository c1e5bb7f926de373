"""The scoring job's one Ray Data pipeline over every pending window, and the shards the driver writes from it.

Why one pipeline: a pipeline per shard rebuilt the actor pool — and reloaded the teacher ensemble — for every shard
(≈ 400 times for a 40 M-triple file). Here the window descriptors (one block each, made in the driver) feed one
`map_batches(WindowScorer)` actor pool (kd/runtime/scoring_actor.py): window k is window k % W of pending shard
k // W (W windows per shard; the last shard's missing ones come back empty). One descriptor per block: each actor
call is one window and its one-row output streams back as soon as it is scored; `preserve_order` keeps the windows
in row order. The driver keeps at most one shard's scores: when every row of a shard has arrived it writes
    shards/part-NNNNN.parquet  qid, pos_pid, neg_pid (from the plan) + every member's raw <name>_pos / <name>_neg
atomically (a temporary name, then a rename: an existing shard is a finished one).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kd.configs.score_teachers import ScoreTeachersConfig
from kd.progress import Progress
from kd.runtime.scoring_actor import WindowScorer, decode
from kd.runtime.scoring_plan import read_ids


def shard_path(out: Path, i: int) -> Path:
    return Path(out) / "shards" / f"part-{i:05d}.parquet"


@dataclass
class StreamResult:
    scored: int = 0
    seconds: float = 0.0
    first_row_seconds: float | None = None  # job start → first scored window received
    loads: dict = field(default_factory=dict)  # actor → ensemble builds in its process

    @property
    def model_loads_per_actor(self) -> int | None:
        return max(self.loads.values()) if self.loads else None


def _dataset(cfg: ScoreTeachersConfig, out: Path, pending: list[int], texts):
    import ray
    per_shard = -(-cfg.shard_size // cfg.window)
    n = len(pending) * per_shard
    # one window descriptor per block, made in the driver: no read task, so nothing upstream waits for a CPU that
    # the actor pool holds (ray.data.range's read tasks each need one: with cpus_per_actor = all the cluster's CPUs,
    # as in the quickstart, the pipeline never started)
    ds = ray.data.from_items([{"id": k} for k in range(n)], override_num_blocks=n)
    ds = ds.map_batches(
        WindowScorer,
        fn_constructor_kwargs={
            "teachers": [t.model_dump() for t in cfg.teachers], "batch_size": cfg.batch_size,
            "use_gpu": cfg.gpus_per_actor > 0, "texts": texts, "use_title": cfg.text.use_title, "out": str(out),
            "pending": pending, "windows_per_shard": per_shard,
        },
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor or None,
    )
    ds.context.execution_options.preserve_order = True
    return ds


def _write_shard(out: Path, i: int, parts: list[dict], names: list[str]) -> int:
    """The shard's ids from the plan + its scores, checked row for row; returns its rows."""
    ids = read_ids(out, i)
    scored = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not np.array_equal(scored["row"], ids.column("row").to_numpy()):
        raise RuntimeError(f"shard {i}: the pipeline returned rows that are not the plan's")
    columns = {c: ids.column(c) for c in ("qid", "pos_pid", "neg_pid")}
    for n in names:
        columns[f"{n}_pos"], columns[f"{n}_neg"] = scored[f"{n}_pos"], scored[f"{n}_neg"]
    path = shard_path(out, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, path)
    return len(ids)


def score_pending(cfg: ScoreTeachersConfig, out: Path, pending: list[int], total: int, texts,
                  progress: Progress, job_start: float) -> StreamResult:
    """Score every pending shard through one pipeline, writing each shard as soon as it is complete."""
    names = [t.name for t in cfg.teachers]
    result = StreamResult()
    start = time.perf_counter()
    shard_rows = {i: min(cfg.shard_size, total - i * cfg.shard_size) for i in pending}
    current: int | None = None
    parts: list[dict] = []
    have = 0
    for batch in _dataset(cfg, out, pending, texts).iter_batches(batch_size=None, batch_format="numpy"):
        for row0, n, blob, loads, actor in zip(batch["row0"], batch["n"], batch["scores"], batch["loads"],
                                               batch["actor"]):
            result.loads[int(actor)] = max(result.loads.get(int(actor), 0), int(loads))
            if n == 0:
                continue
            if result.first_row_seconds is None:
                result.first_row_seconds = time.perf_counter() - job_start
            shard = int(row0) // cfg.shard_size
            if shard != current:
                if current is not None:
                    raise RuntimeError(f"shard {current} incomplete ({have} of {shard_rows[current]} rows)")
                current, parts, have = shard, [], 0
            parts.append(decode(int(row0), int(n), blob, names))
            have += int(n)
            progress.update(int(n))
            if have == shard_rows[shard]:
                result.scored += _write_shard(out, shard, parts, names)
                current, parts = None, []
    if current is not None or result.scored != sum(shard_rows.values()):
        raise RuntimeError(f"scoring returned {result.scored} rows for {sum(shard_rows.values())} pending")
    result.seconds = time.perf_counter() - start
    return result
