"""Validate an id-triples file against the id→text sources without building any text.

Why: a job that joins text later, somewhere else (the scoring pipeline joins inside its actors), still has to
refuse a bad line or an unknown id before its expensive work, naming the file and line, and count what lenient mode
skips. :func:`checked_id_triples` runs :func:`kd.data.join.join_triples` itself — the same line reader, the same
missing-id errors and counts, the same duplicate count — over lookups that only answer *whether* an id is known
(:class:`KnownIds`: a membership test, so a memory-mapped :class:`~kd.data.texts.TsvTextIndex` decodes nothing), and
yields the ids of every triple the join would have kept, in file order. Memory does not grow with the file but for
the join's duplicate count (16 bytes per record, as in every join).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from kd.data.formats import PathLike
from kd.data.join import JoinStats, join_triples


class KnownIds(Mapping):
    """A lookup's membership only: ``get(id)`` is ``""`` for a known id, the default otherwise."""

    def __init__(self, lookup: Mapping):
        self._lookup = lookup

    def get(self, key: Any, default: Any = None) -> Any:
        return "" if key in self._lookup else default

    def __getitem__(self, key: Any) -> str:
        if key not in self._lookup:
            raise KeyError(key)
        return ""

    def __contains__(self, key: object) -> bool:
        return key in self._lookup

    def __len__(self) -> int:
        return len(self._lookup)

    def __iter__(self) -> Iterator:
        return iter(self._lookup)


def checked_id_triples(path: PathLike, queries: Mapping, passages: Mapping, *, strict: bool = True,
                       stats: JoinStats | None = None, use_title: bool = True) -> Iterator[tuple[str, str, str]]:
    """``(qid, pos_pid, neg_pid)`` of every triple :func:`~kd.data.join.join_triples` would join, in file order;
    a bad line or unknown id raises (strict) or is counted in ``stats`` (lenient) exactly as there."""
    for t in join_triples(path, KnownIds(queries), KnownIds(passages), strict=strict, stats=stats,
                          use_title=use_title):
        yield t.qid, t.pos_pid, t.neg_pid


__all__ = ["KnownIds", "checked_id_triples"]
