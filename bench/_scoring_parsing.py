"""bench/scoring.py part 2: teacher-file parsing, kd.data.read_teacher_scores vs a naive split loop (lines/s).

A seeded synthetic teacher file (pos<TAB>neg<TAB>qid<TAB>pos_pid<TAB>neg_pid, MS MARCO-sized id ranges) is written to
a temp folder, read once into the page cache, then parsed by both readers in alternating order; both must return
identical values.
"""
from __future__ import annotations

import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def summary(values: list[float]) -> dict:
    """best / mean / all of a row's rates (the shape every rate in the scoring JSON has)."""
    return {"best": max(values), "mean": statistics.fmean(values), "runs": values}


def write_teacher_file(path: Path, lines: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    chunk = 200_000
    with path.open("w", encoding="utf-8") as f:
        for start in range(0, lines, chunk):
            m = min(chunk, lines - start)
            pos = rng.normal(5.0, 3.0, m).tolist()
            neg = rng.normal(0.0, 3.0, m).tolist()
            qid = rng.integers(0, 1_200_000, m).tolist()
            pp = rng.integers(0, 8_841_823, m).tolist()
            npid = rng.integers(0, 8_841_823, m).tolist()
            f.write("".join(f"{a:.6f}\t{b:.6f}\t{q}\t{p}\t{x}\n" for a, b, q, p, x in zip(pos, neg, qid, pp, npid)))


def naive_parse(path: Path):
    pos, neg, qid, pp, npid = [], [], [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            a, b, q, p, x = line.rstrip("\n").split("\t")
            pos.append(float(a))
            neg.append(float(b))
            qid.append(int(q))
            pp.append(int(p))
            npid.append(int(x))
    return pos, neg, qid, pp, npid


def bench_parsing(args) -> dict:
    from kd.data import read_teacher_scores

    lines = args.parse_lines
    with tempfile.TemporaryDirectory(prefix="kd-bench-teacher-") as tmp:
        path = Path(tmp) / "teacher_scores.tsv"
        t0 = time.perf_counter()
        write_teacher_file(path, lines, seed=args.seed)
        write_s = time.perf_counter() - t0
        size = path.stat().st_size
        path.read_bytes()  # page cache warm for both readers
        times = {"ours": [], "naive": []}
        for _ in range(args.parse_repeats):
            for name in ("ours", "naive"):
                gc.collect()
                t0 = time.perf_counter()
                if name == "ours":
                    ts = read_teacher_scores(path, ids="int", show_progress=False)
                else:
                    ref = naive_parse(path)
                times[name].append(time.perf_counter() - t0)
        same = (
            len(ts) == lines
            and np.array_equal(ts.pos_score, np.asarray(ref[0]))
            and np.array_equal(ts.neg_score, np.asarray(ref[1]))
            and np.array_equal(ts.qid, np.asarray(ref[2]))
            and np.array_equal(ts.pos_pid, np.asarray(ref[3]))
            and np.array_equal(ts.neg_pid, np.asarray(ref[4]))
        )
    out = {
        "lines": lines,
        "file_bytes": size,
        "seed": args.seed,
        "write_seconds": write_s,
        "repeats": args.parse_repeats,
        "ours_call": 'kd.data.read_teacher_scores(path, ids="int", show_progress=False)',
        "naive_call": "for line in f: line.split('\\t') -> float, float, int, int, int appended to lists",
        "results_identical": bool(same),
    }
    for name in ("ours", "naive"):
        out[name] = {"lines_per_s": summary([lines / t for t in times[name]]), "seconds": times[name]}
    out["speedup_ours_over_naive"] = out["ours"]["lines_per_s"]["best"] / out["naive"]["lines_per_s"]["best"]
    return out
