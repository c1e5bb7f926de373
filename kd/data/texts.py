"""Id -> text lookups for the joins: :class:`TsvTextIndex` (memory-mapped ``id<TAB>text``) and the
loaders :func:`load_queries` / :func:`load_passages` that pick a reader from the file name.

:class:`TsvTextIndex` is a compact index over an ``id<TAB>text`` file such as MS MARCO's
8.8M-passage ``collection.tsv``: only offsets live in memory; the text is read from the page cache
on access and the index pickles cheaply to worker processes.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kd.data.formats import (
    DUPLICATE_ID,
    FormatError,
    PathLike,
    ReadStats,
    corpus_texts,
    read_beir_corpus,
    read_beir_queries,
    read_id_text,
)
from kd.data.formats.errors import bad, finish
from kd.data.formats.id_text import ID_TEXT
from kd.data.formats.lines import canonical_int, check_nonempty, decode_line, open_input, progress


class TsvTextIndex(Mapping[str, str]):
    """Read-only ``Mapping`` over an ``id<TAB>text`` file, keeping only offsets in memory.

    Built by one validated pass over the file (same rules and ``strict`` behaviour as
    :func:`kd.data.formats.read_id_text`, duplicate ids included).  When every id is a
    canonical decimal integer (MS MARCO) the keys are a sorted ``int64`` array searched with
    ``numpy.searchsorted`` (~20 bytes per passage: 180 MB for MS MARCO); otherwise a dict from
    id to row.  Lookups accept ``str`` or ``int`` keys.  Texts are decoded on access.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        strict: bool = True,
        stats: ReadStats | None = None,
        show_progress: bool = True,
    ) -> None:
        self.path = str(path)
        stats = stats if stats is not None else ReadStats()
        stats.path = self.path
        self.stats = stats
        if self.path.endswith(".gz"):
            raise ValueError(f"{self.path}: TsvTextIndex needs an uncompressed file (it memory-maps it)")
        ids, offsets, lengths = self._scan(path, stats, strict, show_progress)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._lengths = np.asarray(lengths, dtype=np.int64)
        self._int_keys: np.ndarray | None = None
        self._order: np.ndarray | None = None
        self._dict: dict[str, int] | None = None
        int_ids = [canonical_int(x) for x in ids]
        if ids and all(v is not None for v in int_ids):
            self._index_ints(ids, np.asarray(int_ids, dtype=np.int64), stats, strict)
        else:
            self._index_strings(ids, stats, strict)
        stats.records = len(self._offsets)
        finish(stats, "id/text lines")
        self._mm: mmap.mmap | None = None
        self._file = None

    # -- building -----------------------------------------------------------------------
    @staticmethod
    def _scan(path: PathLike, stats: ReadStats, strict: bool, show_progress: bool):
        """One pass validating every line with the :data:`ID_TEXT` columns of
        :func:`~kd.data.formats.read_id_text`: ids, byte offsets and byte lengths of the texts."""
        check_nonempty(path)
        ids: list[str] = []
        offsets: list[int] = []
        lengths: list[int] = []
        bar = progress(os.path.getsize(path), f"indexing {Path(path).name}", show_progress, unit="B")
        try:
            with open_input(path) as f:
                pos = f.tell()  # 3 after a byte-order mark: offsets are into the file as it is
                for lineno, raw in enumerate(f, 1):
                    stats.lines += 1
                    start = pos
                    pos += len(raw)
                    if lineno % 65536 == 0:
                        bar.update(pos - bar.n)
                    text = decode_line(raw, lineno, path, stats, strict)  # the line rules of every reader
                    rec = None if text is None else ID_TEXT.record(text, lineno, path, stats, strict)
                    if rec is None:
                        continue
                    body = raw.rstrip(b"\r\n")
                    tab = body.index(b"\t")
                    ids.append(rec[0])
                    offsets.append(start + tab + 1)
                    lengths.append(len(body) - tab - 1)
        finally:
            bar.close()
        if stats.lines == 0:  # only a byte-order mark
            raise FormatError("empty file", path=path, reason="empty file")
        return ids, offsets, lengths

    def _index_ints(self, ids: list[str], keys: np.ndarray, stats: ReadStats, strict: bool) -> None:
        """Sorted int64 keys; a repeated id (the later one in file order) is a bad line."""
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        dup = np.flatnonzero(sk[1:] == sk[:-1])
        if len(dup):
            keep = np.ones(len(keys), dtype=bool)
            for d in dup:  # later occurrence (in file order) is the duplicate
                row = order[d + 1]
                bad(stats, strict, self.path, self._line_of(row), DUPLICATE_ID, f"id {ids[row]!r} already defined")
                keep[row] = False
            keys, self._offsets, self._lengths = keys[keep], self._offsets[keep], self._lengths[keep]
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
        self._int_keys, self._order = sk, order

    def _index_strings(self, ids: list[str], stats: ReadStats, strict: bool) -> None:
        """A dict from id to row; a repeated id (the later one) is a bad line."""
        d: dict[str, int] = {}
        keep_rows = []
        for row, pid in enumerate(ids):
            if pid in d:
                bad(stats, strict, self.path, self._line_of(row), DUPLICATE_ID, f"id {pid!r} already defined")
                continue
            d[pid] = len(keep_rows)
            keep_rows.append(row)
        if len(keep_rows) != len(ids):
            self._offsets, self._lengths = self._offsets[keep_rows], self._lengths[keep_rows]
        self._dict = d

    # -- access -------------------------------------------------------------------------
    def _line_of(self, row: int) -> int:
        """1-based line number of a row (error path only: counts newlines up to its offset)."""
        with open(self.path, "rb") as f:
            return f.read(int(self._offsets[row])).count(b"\n") + 1

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            self._file = open(self.path, "rb")  # noqa: SIM115
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def _row(self, key: Any) -> int | None:
        if self._int_keys is not None:
            if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
                k = int(key)
            else:
                k = canonical_int(str(key))
                if k is None:
                    return None
            i = int(np.searchsorted(self._int_keys, k))
            if i < len(self._int_keys) and self._int_keys[i] == k:
                return int(self._order[i])
            return None
        assert self._dict is not None
        return self._dict.get(str(key))

    # -- Mapping protocol ---------------------------------------------------------------
    def __getitem__(self, key: Any) -> str:
        row = self._row(key)
        if row is None:
            raise KeyError(key)
        off, n = int(self._offsets[row]), int(self._lengths[row])
        return self._map()[off: off + n].decode("utf-8")

    def __contains__(self, key: object) -> bool:
        return self._row(key) is not None

    def __len__(self) -> int:
        return len(self._offsets)

    def __iter__(self) -> Iterator[str]:
        if self._int_keys is not None:
            # file order
            inv = np.empty_like(self._order)
            inv[self._order] = np.arange(len(self._order))
            for r in range(len(self._order)):
                yield str(int(self._int_keys[inv[r]]))
        else:
            assert self._dict is not None
            yield from self._dict

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mm"] = None
        state["_file"] = None
        return state

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def load_queries(path: PathLike, *, strict: bool = True) -> dict[str, str]:
    """Queries from ``queries.jsonl`` (BEIR) or an ``id<TAB>text`` TSV (MS MARCO)."""
    if str(path).endswith((".jsonl", ".jsonl.gz")):
        return read_beir_queries(path, strict=strict)
    return read_id_text(path, strict=strict)


def load_passages(
    path: PathLike,
    *,
    strict: bool = True,
    in_memory: bool = False,
    use_title: bool = True,
    title_sep: str = " ",
    show_progress: bool = True,
) -> Mapping[str, str]:
    """Passages as an id -> text mapping.

    ``corpus.jsonl`` (BEIR): a dict of ``title + title_sep + text`` (see :func:`kd.data.formats.doc_text`).
    ``id<TAB>text`` TSV: a :class:`TsvTextIndex` (or a dict with ``in_memory=True``).
    """
    if str(path).endswith((".jsonl", ".jsonl.gz")):
        return corpus_texts(read_beir_corpus(path, strict=strict), use_title=use_title, sep=title_sep)
    if in_memory or str(path).endswith(".gz"):
        return read_id_text(path, strict=strict)
    return TsvTextIndex(path, strict=strict, show_progress=show_progress)


__all__ = ["TsvTextIndex", "load_passages", "load_queries"]
