"""The fast columnar path for teacher-score files: :func:`read_teacher_scores` and
:func:`iter_teacher_score_chunks` (> 1M lines/s, the 40M-line published files).

The file is read in large byte blocks cut at a line end, and each block parsed with
``pyarrow.csv`` into numpy arrays (:func:`_fast_block`).  A block in which pyarrow (or the
finiteness / range / id checks) finds anything wrong is re-parsed by the exact per-line validator,
the :data:`~kd.data.formats.teacher.TEACHER` columns of :func:`~kd.data.formats.iter_teacher_scores`
(:func:`_slow_block`), so errors carry the same file and line information as the per-line path and
lenient mode counts the same reasons.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from kd.data.formats.errors import NON_INTEGER_ID, FormatError, PathLike, ReadStats, bad, finish, new_stats
from kd.data.formats.lines import UTF8_BOM, canonical_int, check_nonempty, decode_line, open_input, progress
from kd.data.formats.teacher import MAX_ABS_TEACHER_SCORE, TEACHER, TEACHER_COLUMNS, IdMode, TeacherScores

def _arrow_ids_to_numpy(cols: list, mode: IdMode):
    """Convert arrow string id columns to int64 (lossless only) or str object arrays.

    Returns ``(arrays, ok)``; ``ok`` is False when ``mode == "int"`` and some id is not a
    canonical integer (the caller then re-parses the block line by line to locate it).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if mode == "str":
        return [np.asarray(c.to_numpy(zero_copy_only=False), dtype=object) for c in cols], True
    out = []
    for c in cols:
        try:
            ints = pc.cast(c, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None, False
        # lossless: "007" or "+7" would parse to 7 but must stay distinct strings
        if not pc.all(pc.equal(pc.cast(ints, pa.string()), c)).as_py():
            return None, False
        out.append(ints.to_numpy())
    return out, True


def _slow_block(
    data: bytes, first_line: int, path: PathLike, stats: ReadStats, strict: bool,
    id_mode: IdMode, score_dtype,
) -> TeacherScores:
    """Exact per-line validation of one block (used when the fast path found a problem)."""
    pos, neg, q, p, n = [], [], [], [], []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, raw in enumerate(lines):
        lineno = first_line + i
        text = decode_line(raw, lineno, path, stats, strict)
        if text is None:
            continue
        rec = TEACHER.record(text, lineno, path, stats, strict)
        if rec is None:
            continue
        if id_mode == "int":
            bad_id = next((x for x in rec[2:5] if canonical_int(x) is None), None)
            if bad_id is not None:
                bad(stats, strict, path, lineno, NON_INTEGER_ID, f"id {bad_id!r} (ids='int'; use ids='str')")
                continue
        pos.append(rec.pos_score)
        neg.append(rec.neg_score)
        q.append(rec.qid)
        p.append(rec.pos_pid)
        n.append(rec.neg_pid)
    if id_mode == "int":
        ids = [np.array([int(x) for x in col], dtype=np.int64) for col in (q, p, n)]
    else:
        ids = [_obj_array(col) for col in (q, p, n)]
    return TeacherScores(
        np.array(pos, dtype=score_dtype), np.array(neg, dtype=score_dtype), *ids,
        path=str(path), first_line=first_line,
    )


def _obj_array(items: list) -> np.ndarray:
    a = np.empty(len(items), dtype=object)
    a[:] = items
    return a


# A string starting or ending with a character Python's str.strip() removes (str.isspace: ASCII
# whitespace, the \x1c-\x1f separators, NEL and the Unicode Z categories); RE2's \s is ASCII only.
_PY_SPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f\x{85}\p{Z}]"
_PY_SPACE_AT_END = f"^{_PY_SPACE}|{_PY_SPACE}$"


def _fast_block(
    data: bytes, n_lines: int, first_line: int, path: PathLike, id_mode: IdMode, score_dtype
) -> TeacherScores | None:
    """Parse one block with pyarrow; ``None`` if anything is off (caller falls back).

    It must accept only what the per-line validator accepts, with the same values: pyarrow
    strips a byte-order mark at the start of a buffer (the per-line rules refuse one at a line
    start), and keeps ids' surrounding whitespace (the per-line path strips Python's whitespace),
    so blocks with either go to the exact path too.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if data.startswith(UTF8_BOM) or b"\n" + UTF8_BOM in data:
        return None

    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=list(TEACHER_COLUMNS), block_size=1 << 24, use_threads=True),
            parse_options=pacsv.ParseOptions(
                delimiter="\t", quote_char=False, escape_char=False, newlines_in_values=False, ignore_empty_lines=False,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={"pos_score": pa.float64(), "neg_score": pa.float64(),
                              "qid": pa.string(), "pos_pid": pa.string(), "neg_pid": pa.string()},
                null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False,
                check_utf8=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if table.num_rows != n_lines:
        return None
    pos = table.column("pos_score").to_numpy()
    neg = table.column("neg_score").to_numpy()
    if not ((np.abs(pos) <= MAX_ABS_TEACHER_SCORE).all() and (np.abs(neg) <= MAX_ABS_TEACHER_SCORE).all()):
        return None  # NaN, inf or out of range: the exact path names the line
    import pyarrow.compute as pc

    id_cols = [table.column(c) for c in TEACHER_COLUMNS[2:]]
    for c in id_cols:  # empty ids or ids with surrounding spaces need the exact path
        if pc.any(pc.equal(pc.binary_length(c), 0)).as_py():
            return None
    if id_mode == "str":
        for c in id_cols:
            if pc.any(pc.match_substring_regex(c, _PY_SPACE_AT_END)).as_py():
                return None
    ids, ok = _arrow_ids_to_numpy(id_cols, "str" if id_mode == "str" else "int")
    if not ok:
        return None
    return TeacherScores(pos.astype(score_dtype, copy=False), neg.astype(score_dtype, copy=False), *ids,
                         path=str(path), first_line=first_line)


def _line_blocks(f: IO[bytes], chunk_bytes: int, bar) -> Iterator[bytes]:
    """The file about ``chunk_bytes`` at a time, each block cut after its last line end (the
    file's last block may lack one); ``bar`` advances by the bytes read."""
    carry = b""
    while block := f.read(chunk_bytes):
        bar.update(len(block))
        data = carry + block
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield data[:cut]
    if carry:
        yield carry


def iter_teacher_score_chunks(
    path: PathLike,
    *,
    strict: bool = True,
    stats: ReadStats | None = None,
    ids: Literal["int", "str"] = "int",
    score_dtype: Any = np.float64,
    chunk_bytes: int = 64 << 20,
    show_progress: bool = False,
) -> Iterator[TeacherScores]:
    """Stream a teacher file as columnar :class:`TeacherScores` blocks (fast path).

    Each block (about ``chunk_bytes`` of text, cut at a line end) is parsed by pyarrow; a block
    in which anything is malformed (column count, non-numeric / NaN / inf score, empty id,
    invalid UTF-8, blank line, non-integer id with ``ids="int"``) is re-parsed line by line,
    so a strict read raises :class:`FormatError` with the exact file and line, and a lenient
    read skips and counts exactly as :func:`iter_teacher_scores` does.

    ``ids="int"`` (MS MARCO) gives int64 id arrays and treats an id that is not a canonical
    decimal integer (``"007"``, ``"+7"``, ``"D12"``) as a bad line; ``ids="str"`` gives object
    arrays of ``str``.  :func:`read_teacher_scores` additionally supports ``ids="auto"``.
    """
    if ids not in ("int", "str"):
        raise ValueError(f"ids must be 'int' or 'str' for streaming, got {ids!r}")
    stats = new_stats(stats, path)
    check_nonempty(path)
    total = os.path.getsize(path)
    bar = progress(total, f"reading {Path(path).name}", show_progress, unit="B")
    try:
        with open_input(path) as f:
            next_line = 1
            for data in _line_blocks(f, chunk_bytes, bar):
                n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
                stats.lines += n_lines
                chunk = _fast_block(data, n_lines, next_line, path, ids, score_dtype)
                if chunk is None:
                    chunk = _slow_block(data, next_line, path, stats, strict, ids, score_dtype)
                next_line += n_lines
                stats.records += len(chunk)
                if len(chunk):
                    yield chunk
    finally:
        bar.close()
    if stats.lines == 0:
        raise FormatError("empty file", path=path, reason="empty file")
    finish(stats, "teacher-score lines")


def read_teacher_scores(
    path: PathLike,
    *,
    strict: bool = True,
    stats: ReadStats | None = None,
    ids: IdMode = "auto",
    score_dtype: Any = np.float64,
    chunk_bytes: int = 64 << 20,
    show_progress: bool = True,
) -> TeacherScores:
    """Read a whole teacher file into columnar numpy arrays (fast path, > 1M lines/s).

    Memory: 8 bytes per score and per integer id, i.e. ~1.6 GB for the 40M-line published
    files with ``score_dtype=float64`` (pass ``np.float32`` to save 320 MB); the blocks are
    concatenated at the end, so the peak is about twice that.  ``ids="auto"`` uses int64 ids
    when every id of the valid lines is a canonical decimal integer and ``str`` otherwise (the
    file is then read a second time with ``ids="str"``).  ``str`` ids of a 40M-line file are
    120M Python strings: for the published MS MARCO files pass ``ids="int"`` to make a stray
    non-integer id a bad line instead.  See :func:`iter_teacher_score_chunks` for the
    validation and error behaviour.
    """
    stats = new_stats(stats, path)
    kw = dict(score_dtype=score_dtype, chunk_bytes=chunk_bytes, show_progress=show_progress)
    if ids not in ("auto", "int", "str"):
        raise ValueError(f"ids must be 'auto', 'int' or 'str', got {ids!r}")
    if ids != "auto":
        return TeacherScores.concat(list(iter_teacher_score_chunks(path, strict=strict, stats=stats, ids=ids, **kw)))
    # auto: integer ids first (the MS MARCO case: one pass); a non-integer id anywhere in the
    # valid lines means the ids are strings, and the file is read again with ids="str".
    probe = ReadStats(quiet=True)
    try:
        out = TeacherScores.concat(list(iter_teacher_score_chunks(path, strict=strict, stats=probe, ids="int", **kw)))
    except FormatError as e:
        if e.reason not in (NON_INTEGER_ID, "no valid records"):
            raise
    else:
        if NON_INTEGER_ID not in probe.skipped:
            probe.quiet = stats.quiet
            probe.path = stats.path
            stats.__dict__.update(probe.__dict__)
            stats.log()
            return out
    return TeacherScores.concat(list(iter_teacher_score_chunks(path, strict=strict, stats=stats, ids="str", **kw)))


