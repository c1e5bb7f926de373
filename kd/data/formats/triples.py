"""Id triples: ``qid<TAB>pos_pid<TAB>neg_pid`` (MS MARCO ``qidpidtriples``, mined triples)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from kd.data.formats.errors import FormatError, PathLike, ReadStats
from kd.data.formats.lines import Columns, check_token, ident, iter_records, open_text_w


class Triple(NamedTuple):
    qid: str
    pos_pid: str
    neg_pid: str


TRIPLES = Columns("qid pos_pid neg_pid", (ident, ident, ident), Triple)


def iter_triples(
    path: PathLike, *, strict: bool = True, stats: ReadStats | None = None
) -> Iterator[Triple]:
    """Stream ``qid<TAB>pos_pid<TAB>neg_pid`` id triples."""
    return iter_records(path, TRIPLES, strict=strict, stats=stats, what="triples")


def write_triples(path: PathLike, triples: Iterable[tuple[Any, Any, Any]]) -> int:
    """Write ``qid<TAB>pos_pid<TAB>neg_pid`` lines; returns the number written."""
    n = 0
    with open_text_w(path) as f:
        for t in triples:
            n += 1
            if len(t) != 3:
                raise FormatError(f"record {n} has {len(t)} fields, expected 3 (qid, pos_pid, neg_pid)",
                                  path=path, line=n)
            ids = [str(x) for x in t]
            for x in ids:
                check_token(path, n, "id", x)
            f.write("\t".join(ids) + "\n")
    return n
