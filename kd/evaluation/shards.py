"""Corpus embeddings on disk: encoders write pieces, the search reads them back as fixed-size shards.

Why: gathering a corpus's embeddings in the driver and copying them into one FAISS index costs 2 x N x d x 4 bytes
on the head node (14 GiB at 5 M documents, 384-d). Here whoever encodes (the Ray Data actors, or the in-process
encoder) writes each block of documents it encoded as a *piece*; the search (kd/evaluation/search.py) streams the
pieces back as shards of `shard_size` rows, memory-mapped, so the driver holds at most one shard (shard_size x d x 4
bytes: 96 MiB at 65,536 x 384) whatever the corpus size.

Layout of a shard folder, one pair of files per piece:

    <name>.emb.npy    float32 [n, d]  the embeddings of n documents
    <name>.rows.npy   int64 [n]       their positions in the task's document list (`docids`)

Names are the zero-padded number of the piece's first planned batch (kd.evaluation.encoding.plan_batches), so the
pieces, and the shards cut from them, are the same whichever actor wrote what; a retried actor overwrites its piece
with the same bytes. Each file is written under a temporary name and renamed, so a reader never sees half a piece.
`ShardSet.open` checks that every document is there exactly once before any search.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMB, ROWS = ".emb.npy", ".rows.npy"


def piece_name(first_batch: int) -> str:
    return f"{int(first_batch):09d}"


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def write_piece(folder: str | Path, name: str, rows: Sequence[int], emb: np.ndarray) -> None:
    """One piece: `emb[i]` is the embedding of document `rows[i]`. The embeddings file is renamed into place first
    and the rows file last, so a listed rows file always has its embeddings."""
    folder = Path(folder)
    rows = np.asarray(rows, dtype=np.int64)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != rows.shape[0]:
        raise ValueError(f"piece {name}: {rows.shape[0]} rows but embeddings of shape {emb.shape}")
    _save(folder / f"{name}{EMB}", emb)
    _save(folder / f"{name}{ROWS}", rows)


class PieceWriter:
    """Buffers encoded batches and writes a piece whenever `rows_per_piece` documents are buffered (and on close):
    the in-process encoder's way of writing the corpus without holding it."""

    def __init__(self, folder: str | Path, rows_per_piece: int):
        if rows_per_piece < 1:
            raise ValueError(f"rows_per_piece must be >= 1, got {rows_per_piece}")
        self.folder, self.rows_per_piece = Path(folder), rows_per_piece
        self._first: int | None = None
        self._rows: list[np.ndarray] = []
        self._embs: list[np.ndarray] = []
        self._n = 0

    def add(self, batch: int, rows: Sequence[int], emb: np.ndarray) -> None:
        if self._first is None:
            self._first = batch
        self._rows.append(np.asarray(rows, dtype=np.int64))
        self._embs.append(np.asarray(emb, dtype=np.float32))
        self._n += len(self._rows[-1])
        if self._n >= self.rows_per_piece:
            self.close()

    def close(self) -> None:
        if self._n:
            write_piece(self.folder, piece_name(self._first), np.concatenate(self._rows), np.concatenate(self._embs))
        self._first, self._rows, self._embs, self._n = None, [], [], 0


def reset_folder(folder: str | Path) -> Path:
    """An empty shard folder (an earlier job's pieces removed): what the encoders write into."""
    folder = Path(folder).resolve()  # absolute: Ray actors may run in another working directory
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


@dataclass(frozen=True)
class ShardSet:
    """A checked shard folder of `n_docs` documents with `dim`-dimensional embeddings."""

    folder: Path
    names: tuple[str, ...]
    n_docs: int
    dim: int

    @classmethod
    def open(cls, folder: str | Path, n_docs: int) -> "ShardSet":
        """The pieces of `folder`, checked: every row in [0, n_docs) exactly once, one embedding dimension. Reads
        the rows files (8 bytes a document) and the embedding files' headers only."""
        folder = Path(folder)
        names = tuple(sorted(p.name[: -len(ROWS)] for p in folder.glob(f"*{ROWS}")))
        seen = np.zeros(n_docs, dtype=np.int64)
        dims = set()
        for name in names:
            rows = np.load(folder / f"{name}{ROWS}")
            emb = np.load(folder / f"{name}{EMB}", mmap_mode="r")
            if emb.ndim != 2 or emb.shape[0] != rows.shape[0]:
                raise RuntimeError(f"shard piece {folder / name}: {rows.shape[0]} rows, embeddings {emb.shape}")
            if rows.size and (rows.min() < 0 or rows.max() >= n_docs):
                raise RuntimeError(f"shard piece {folder / name} names rows outside [0, {n_docs})")
            np.add.at(seen, rows, 1)
            dims.add(int(emb.shape[1]))
        if (seen > 1).any():
            raise RuntimeError(f"the encoder wrote {int((seen > 1).sum())} document(s) twice into {folder}, "
                               f"e.g. row {int(np.flatnonzero(seen > 1)[0])}")
        if n_docs == 0 or not (seen == 1).all():
            raise RuntimeError(f"the encoder wrote {int((seen == 1).sum())} of {n_docs} embeddings into {folder} "
                               "(with Ray actors on several nodes, output_dir must be on storage all nodes share)")
        if len(dims) != 1:
            raise RuntimeError(f"the pieces in {folder} have different embedding dimensions: {sorted(dims)}")
        return cls(folder, names, n_docs, dims.pop())

    def pieces(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, memory-mapped embeddings) per piece, in name order."""
        for name in self.names:
            yield np.load(self.folder / f"{name}{ROWS}"), np.load(self.folder / f"{name}{EMB}", mmap_mode="r")

    def shards(self, shard_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, float32 [<= shard_size, d]) shards cut every `shard_size` documents across the pieces; a shard that
        lies inside one piece is a memory-mapped slice of it (no copy), one that spans pieces is gathered into one
        array. Only the shard being yielded (and the pieces it is cut from, mapped) is resident."""
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        rows_buf: list[np.ndarray] = []
        emb_buf: list[np.ndarray] = []
        held = 0
        for rows, emb in self.pieces():
            start = 0
            while start < len(rows):
                take = min(shard_size - held, len(rows) - start)
                rows_buf.append(rows[start : start + take])
                emb_buf.append(emb[start : start + take])
                held, start = held + take, start + take
                if held == shard_size:
                    yield _join(rows_buf, emb_buf)
                    rows_buf, emb_buf, held = [], [], 0
        if held:
            yield _join(rows_buf, emb_buf)

    def count_shards(self, shard_size: int) -> int:
        return -(-self.n_docs // shard_size)

    def load_all(self) -> np.ndarray:
        """The whole corpus, float32 [n_docs, d] in document order: for the HNSW index only, which is approximate and
        cannot be cut into shards without changing its results (this costs n_docs x d x 4 bytes in the driver)."""
        out = np.empty((self.n_docs, self.dim), dtype=np.float32)
        for rows, emb in self.pieces():
            out[rows] = emb
        return out


def _join(rows: list[np.ndarray], embs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if len(embs) == 1:
        return rows[0], embs[0]
    return np.concatenate(rows), np.concatenate(embs)
