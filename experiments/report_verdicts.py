"""The verdicts of docs/RESULTS.md, computed from the same numbers as its tables (the stats each finding of
experiments/report.py returns): bullet lines, or "not run yet." while a finding has no runs."""
from __future__ import annotations

import math


def f1_verdict(s1: dict) -> str:
    h = s1.get("headline")
    out = []
    if h:
        mn, sd, rm, rs, n = h
        out.append(f"- 2-layer top-bottom keeps {100 * rm:.1f}% ± {100 * rs:.1f}% of the teacher over {n} seeds "
                   f"(goal ≥ 95%: {'met' if rm >= 0.95 else 'not met'}; paper 91.6% on SciFact, 92.5% BEIR average).")
    for n in (1, 2, 3):
        row = {s: s1.get((n, s, 0)) for s in ("top-bottom", "uniform", "bottom")}
        have = {s: v[0] for s, v in row.items() if v and v[0] is not None}
        if n == 1 and "top-bottom" in have:
            have["bottom"] = have["top-bottom"]
        if len(have) == 3:
            order = sorted(have, key=have.get, reverse=True)
            out.append(f"- {n} layer{'s' if n > 1 else ''}, seed 0{' (bottom = top-bottom: both keep layer {0})' if n == 1 else ''}: " + " > ".join(f"{s} {have[s]:.4f}" for s in order)
                       + (" — top-bottom best, as in the paper" if order[0] == "top-bottom" else
                          " — top-bottom is *not* the best here (paper: top-bottom > uniform > bottom)")
                       + (f"; the spread ({max(have.values()) - min(have.values()):.4f}) is within one seed std of the "
                          f"2-layer headline ({h[1]:.4f})" if h and not math.isnan(h[1])
                          and max(have.values()) - min(have.values()) <= h[1] else ""))
    sp = s1.get("speeds") or {}
    if sp:
        parts = []
        for n in (1, 2, 3):
            cells = [f"bs{b} {min(sp[(n, b)]):.2f}–{max(sp[(n, b)]):.2f}×" for b in (1, 16, 64) if sp.get((n, b))]
            if cells:
                parts.append(f"{n} layer{'s' if n > 1 else ''} ({len(sp.get((n, 64), []))} students): " + ", ".join(cells))
        out.append("- Query-encoding speed-up over the teacher (same job, uncontended timings only), range over the "
                   "distilled students of each depth: " + "; ".join(parts) + ". Students of one depth have identical "
                   "shapes, so the spread within a depth is timing noise of the 2-core VM, not a model difference.")
    if s1.get("eval_repro"):
        k, d = s1["eval_repro"]
        out.append(f"- Re-running the evaluation: {k} models were evaluated by two separate `jobs.evaluate` runs; the "
                   f"largest difference in SciFact nDCG@10 between them is {d:.4f} (MLflow keeps both runs; the "
                   "table shows the newest).")
    if s1.get("contended_any"):
        out.append("- † Speed-up not reported: the student's or the teacher's query-encoding timing was taken while "
                   "other processes used more than 10% of the CPU (the evaluate job measures and flags this: MLflow "
                   "params `info.contended`, `info.other_processes_cpu_share`). The raw queries/s stay in the table "
                   "and in MLflow, but a ratio of a loaded and an unloaded timing means nothing. Re-run "
                   "`python experiments/run.py eval f1` on a quiet machine to fill these cells.")
    return "\n".join(out) if out else "- not run yet."


def f2_verdicts(stats: dict) -> str:
    out = []
    for arch in ("bert_cat", "bert_dot", "colbert", "prettr", "tk"):
        have = {c: stats.get((arch, c)) for c in ("nokd", "kd-t1", "kd-t2")}
        if not all(have.values()):
            continue
        parts = []
        for i, ds in enumerate(("SciFact", "DL'19")):
            n, t1, t2 = (have[c][i] for c in ("nokd", "kd-t1", "kd-t2"))
            parts.append(f"{ds}: KD > no-KD {'yes' if max(t1, t2) > n else 'no'} (T1 {t1 - n:+.4f}, T2 {t2 - n:+.4f}), "
                         f"T2 ≥ T1 {'yes' if t2 >= t1 else 'no'}")
        out.append(f"- {arch.upper()} (seed 0): " + "; ".join(parts))
    means = stats.get("bert_dot_mean", {})
    if all(c in means for c in ("nokd", "kd-t1", "kd-t2")):
        parts = []
        for i, ds in enumerate(("SciFact", "DL'19")):
            (n, ns), (t1, s1), (t2, s2) = (means[c][i] for c in ("nokd", "kd-t1", "kd-t2"))
            noise = max(ns, s1, s2)
            kd_vs = ("KD better than no-KD beyond seed noise" if min(t1, t2) - n > noise else
                     "KD worse than no-KD beyond seed noise" if max(t1, t2) - n < -noise else
                     "KD vs no-KD within seed noise")
            parts.append(f"{ds}: T1 − no-KD {t1 - n:+.4f}, T2 − no-KD {t2 - n:+.4f}, T2 − T1 {t2 - t1:+.4f} (largest "
                         f"seed std {noise:.4f}: {kd_vs}; T2 ≥ T1 {'yes' if t2 >= t1 else 'no'})")
        k = ", ".join(f"{c} {means[c][2]}" for c in ("nokd", "kd-t1", "kd-t2"))
        out.append(f"- **BERT_DOT, seed means (headline; seeds per condition: {k})**: " + "; ".join(parts))
    return "\n".join(out) if out else "- no architecture has all three conditions evaluated yet."


def f3_verdicts(s3: dict) -> str:
    std, simp, t = s3.get("f3-3l-standard-kd"), s3.get("f3-3l-simplified-tinybert"), s3.get("f3-teacher-6l")
    out = []
    means = s3.get("mean", {})
    if "standard-kd" in means and "simplified-tinybert" in means:
        for key, what in (("dl19", "DL'19 passage re-ranking"), ("maxp", "SciFact documents, MaxP"),
                          ("firstp", "SciFact documents, FirstP")):
            a, b = means["standard-kd"].get(key), means["simplified-tinybert"].get(key)
            if a is None or b is None:
                continue
            noise = max(a[1], b[1])
            out.append(f"- **{what}, mean of {min(a[2], b[2])} seeds (headline)**: Simplified TinyBERT {b[0]:.4f} vs "
                       f"standard KD {a[0]:.4f} ({b[0] - a[0]:+.4f}; largest seed std {noise:.4f}: "
                       f"{'beyond' if abs(b[0] - a[0]) > noise else 'within'} seed noise)")
    if std and simp and std.get("dl19") is not None and simp.get("dl19") is not None:
        for key, what in (("dl19", "DL'19 passage re-ranking"), ("maxp", "SciFact documents, MaxP"),
                          ("firstp", "SciFact documents, FirstP")):
            a, b = std.get(key), simp.get(key)
            if a is None or b is None:
                continue
            out.append(f"- {what}, seed 0: Simplified TinyBERT {b:.4f} vs standard KD {a:.4f} "
                       f"({'Simplified TinyBERT better' if b > a else 'standard KD better or equal'}, {b - a:+.4f})"
                       + (f"; teacher {t[key]:.4f}" if t and t.get(key) is not None else ""))
    for name, v in (("teacher", t), ("standard KD", std), ("Simplified TinyBERT", simp)):
        if v and v.get("maxp") is not None and v.get("firstp") is not None:
            out.append(f"- {name}: MaxP {v['maxp']:.4f} vs FirstP {v['firstp']:.4f} "
                       f"({'MaxP better' if v['maxp'] > v['firstp'] else 'FirstP better or equal'})")
    return "\n".join(out) if out else "- not run yet."
