"""What a reader reports: :class:`FormatError` (file, line, reason), :class:`ReadStats` (lenient
counts) and the reason names every reader shares.

Strict mode raises on the first bad line; lenient mode counts it per reason (:func:`bad` does
one or the other) and :func:`finish` logs the counts at the end of the file, and raises when no
line was valid.  Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

# The package's one logger, named as before the split so filters on "kd.data.formats" keep working.
logger = logging.getLogger("kd.data.formats")

PathLike = str | os.PathLike

# Reasons (the keys of ReadStats.skipped). Kept as module constants so callers can match on them.
WRONG_COLUMNS = "wrong column count"
NON_NUMERIC_SCORE = "non-numeric score"
NON_FINITE_SCORE = "non-finite score"
NON_INTEGER_GRADE = "non-integer grade"
NON_INTEGER_RANK = "non-integer rank"
NON_INTEGER_ID = "non-integer id"
BLANK_LINE = "blank line"
DUPLICATE_HEADER = "duplicate header"
DUPLICATE_ID = "duplicate id"
DUPLICATE_JUDGMENT = "duplicate judgment"
DUPLICATE_DOCUMENT = "duplicate document"
EMPTY_ID = "empty id"
INVALID_JSON = "invalid JSON"
MISSING_FIELD = "missing field"
INVALID_UTF8 = "invalid UTF-8"
UNKNOWN_QUERY_ID = "unknown query id"
UNKNOWN_PASSAGE_ID = "unknown passage id"
UNKNOWN_DOCUMENT_ID = "unknown document id"
MISPLACED_BOM = "misplaced byte-order mark"
SCORE_OUT_OF_RANGE = "score out of range"
MISSING_FILE = "missing file"


class FormatError(ValueError):
    """A malformed input file.

    ``path``, ``line`` (1-based, ``None`` for whole-file problems) and ``reason`` (one of the
    module's reason constants, e.g. ``"non-finite score"``) are available as attributes; the
    message always names the file and, where there is one, the line.
    """

    def __init__(
        self,
        message: str,
        *,
        path: PathLike | None = None,
        line: int | None = None,
        reason: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = reason
        self.detail = message
        where = ""
        if self.path is not None:
            where = f"{self.path}, line {line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


class MissingFileError(FormatError, FileNotFoundError):
    """An input file (or folder) that does not exist: bad input, so a :class:`FormatError` (job
    entrypoints report it in one line, exit code 2), and a ``FileNotFoundError`` for callers that
    catch that."""


@dataclass
class ReadStats:
    """What a reader saw: lines read, records produced, and bad lines skipped per reason.

    ``first_bad_line`` keeps, per reason, the first line number where it occurred (for the
    warning and for debugging lenient runs).
    """

    path: str | None = None
    lines: int = 0
    records: int = 0
    header: bool = False
    skipped: Counter = field(default_factory=Counter)
    first_bad_line: dict = field(default_factory=dict)
    quiet: bool = False  # True: do not log the end-of-file warning (the caller reports)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, line: int | None) -> None:
        self.skipped[reason] += 1
        if line is not None:
            self.first_bad_line.setdefault(reason, line)

    def summary(self) -> str:
        parts = ", ".join(
            f"{reason}: {n} (first at line {self.first_bad_line.get(reason, '?')})"
            for reason, n in sorted(self.skipped.items())
        )
        return (
            f"{self.path}: {self.records} records from {self.lines} lines; "
            f"skipped {self.n_skipped} bad line(s)" + (f" [{parts}]" if parts else "")
        )

    def log(self) -> None:
        """Emit a warning if anything was skipped (called by every reader at end of file)."""
        if self.n_skipped and not self.quiet:
            logger.warning("lenient read: %s", self.summary())


def bad(
    stats: ReadStats, strict: bool, path: PathLike, line: int | None, reason: str, detail: str = ""
) -> None:
    """Raise (strict) or count (lenient) one bad line; returns ``None`` (a parser's "no record")."""
    if strict:
        raise FormatError(f"{reason}" + (f": {detail}" if detail else ""), path=path, line=line, reason=reason)
    stats.skip(reason, line)


def new_stats(stats: ReadStats | None, path: PathLike) -> ReadStats:
    """The caller's :class:`ReadStats` (or a fresh one), now naming ``path``."""
    if stats is None:
        stats = ReadStats()
    stats.path = str(path)
    return stats


def finish(stats: ReadStats, what: str = "records") -> None:
    """End of file: log what was skipped; a file with no valid record is an error in both modes."""
    stats.log()
    if stats.records == 0:
        raise FormatError(
            f"no valid {what} (all {stats.lines} line(s) were bad: {dict(stats.skipped)})",
            path=stats.path,
            reason="no valid records",
        )


def short(s: str, n: int = 80) -> str:
    """``repr`` of a field, cut at ``n`` characters, for messages."""
    return repr(s if len(s) <= n else s[:n] + "...")
