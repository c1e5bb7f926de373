"""The scoring job's plan: the validated id triples of every pending shard, cut into windows by row index.

Why: the scoring pipeline joins text inside its actors, so what it reads is ids, and which rows form a window must
not depend on Ray's batching (a bi-encoder member encodes each distinct text of a window once and every member sorts
a window by length: a window's rows decide its scores' last bits). The driver's validation pass streams the checked
triples (kd.data.id_rows) into
    plan/part-NNNNN.parquet   row (int64), qid, pos_pid, neg_pid — one Parquet row group per window
for each shard not yet on disk: row r is in shard r // shard_size, and a shard's windows start at its first row and
hold `window` rows (the last one fewer), as they did when each shard was one Ray Data batch stream. The driver holds
one window of ids at a time. An actor reads one row group; the driver reads a shard's ids back when it writes the
shard. The plan is the job's own file (Parquet, nothing unpickled), rewritten by every run and removed at the end.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PLAN_DIR = "plan"
SCHEMA = pa.schema([("row", pa.int64()), ("qid", pa.string()), ("pos_pid", pa.string()), ("neg_pid", pa.string())])


def plan_path(out: Path, shard: int) -> Path:
    return Path(out) / PLAN_DIR / f"part-{shard:05d}.parquet"


def remove_plan(out: Path) -> None:
    shutil.rmtree(Path(out) / PLAN_DIR, ignore_errors=True)


class _PieceWriter:
    """One shard's plan piece: windows appended as row groups, renamed into place when the shard is complete."""

    def __init__(self, out: Path, shard: int):
        self.path = plan_path(out, shard)
        self.tmp = self.path.with_suffix(".parquet.tmp")
        self.writer = pq.ParquetWriter(self.tmp, SCHEMA)

    def window(self, first_row: int, ids: list[list[str]]) -> None:
        rows = pa.array(range(first_row, first_row + len(ids[0])), pa.int64())
        self.writer.write_table(pa.Table.from_arrays([rows] + [pa.array(c, pa.string()) for c in ids], schema=SCHEMA))

    def close(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.path)


def write_plan(out: Path, triples: Iterable[tuple[str, str, str]], shard_size: int, window: int,
               skip: Callable[[int], bool]) -> tuple[int, list[int]]:
    """Stream `triples` (row order) into the pieces of every shard `skip` does not name; returns (rows, shards
    written). Consumes all of `triples` (the validation pass), whatever is skipped."""
    remove_plan(out)
    (Path(out) / PLAN_DIR).mkdir(parents=True)
    written: list[int] = []
    piece: _PieceWriter | None = None
    ids: list[list[str]] = [[], [], []]
    start = n = 0

    def flush() -> None:
        nonlocal ids
        if piece is not None and ids[0]:
            piece.window(start, ids)
        ids = [[], [], []]

    for row, t in enumerate(triples):
        n = row + 1
        offset = row % shard_size
        if offset == 0 or offset % window == 0:  # a new window (and at offset 0 a new shard)
            flush()
            start = row
            if offset == 0:
                if piece is not None:
                    piece.close()
                piece = None if skip(row // shard_size) else _PieceWriter(out, row // shard_size)
                if piece is not None:
                    written.append(row // shard_size)
        if piece is not None:
            for c, v in zip(ids, t):
                c.append(v)
    flush()
    if piece is not None:
        piece.close()
    return n, written


def read_window(out: Path, shard: int, window: int) -> pa.Table | None:
    """Row group `window` of a shard's piece (None past its last window: the last shard has fewer)."""
    f = pq.ParquetFile(plan_path(out, shard))
    if window >= f.num_row_groups:
        return None
    return f.read_row_group(window)


def read_ids(out: Path, shard: int) -> pa.Table:
    """A shard's rows and ids, in row order."""
    return pq.read_table(plan_path(out, shard), schema=SCHEMA)
