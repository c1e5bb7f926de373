"""``id<TAB>text`` files: MS MARCO ``collection.tsv`` and ``queries.*.tsv`` (exactly two columns).

The id is stripped and must not be empty; the text is kept as in the file (MS MARCO has leading
spaces).  For the 8.8M-passage collection prefer :class:`kd.data.texts.TsvTextIndex`, which
validates with the same :data:`ID_TEXT` columns but keeps only offsets in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kd.data.formats.errors import DUPLICATE_ID, FormatError, PathLike, ReadStats, new_stats, short
from kd.data.formats.lines import Columns, collect_unique, ident, iter_records, open_text_w, raw

ID_TEXT = Columns("id, text", (ident, raw))


def iter_id_text(
    path: PathLike, *, strict: bool = True, stats: ReadStats | None = None
) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` pairs from an ``id<TAB>text`` file (exactly two columns).

    Leading/trailing whitespace of the text is kept as in the file (MS MARCO has some).
    Duplicate ids are not detected here (streaming); :func:`read_id_text` detects them.
    """
    return iter_records(path, ID_TEXT, strict=strict, stats=stats)


def read_id_text(
    path: PathLike, *, strict: bool = True, stats: ReadStats | None = None
) -> dict[str, str]:
    """Load an ``id<TAB>text`` file into a dict (queries; small collections).

    For the 8.8M-passage MS MARCO collection prefer :class:`kd.data.texts.TsvTextIndex`, which
    keeps only offsets in memory.  A repeated id is a bad line (``"duplicate id"``).
    """
    stats = new_stats(stats, path)
    return collect_unique(iter_id_text(path, strict=strict, stats=stats), path, stats, strict,
                          DUPLICATE_ID, lambda pid: f"id {pid!r} already defined")


# aliases with the MS MARCO names
read_queries_tsv = read_id_text
read_collection_tsv = read_id_text


def write_id_text(path: PathLike, items: Iterable[tuple[Any, str]] | Mapping[Any, str]) -> int:
    """Write ``id<TAB>text`` lines; ids and texts must not contain tabs or newlines."""
    pairs = items.items() if isinstance(items, Mapping) else items
    n = 0
    with open_text_w(path) as f:
        for pid, text in pairs:
            pid = str(pid)
            for what, s in (("id", pid), ("text", text)):
                if any(c in s for c in "\t\r\n"):
                    raise FormatError(f"{what} of record {n + 1} contains a tab or newline: {short(s)}",
                                      path=path, line=n + 1)
            f.write(f"{pid}\t{text}\n")
            n += 1
    return n
