#!/usr/bin/env python3
"""Efficient students vs the teacher ensemble: re-ranking speed on the same machine, in the same run (issue 15.3).

    python bench/students.py                     # 10 DL'19 queries x BM25 top-100 -> bench/results/students-cpu.json
    python bench/students.py --queries 1 --repeats 1 --out /tmp/students.json   # a quick look (~1 min)

Rows, all fp32 on CPU, all re-ranking through `kd.evaluation.rerank` — exactly what the evaluation job's re-rank
task runs (`Ranker.predict`'s length-sorted batches of pairs; a single-vector dual encoder, BERT_DOT, encodes each
distinct query and passage once instead):
  teacher   the quickstart's teacher, built in-process from its members (configs/quickstart.yaml `teachers.given`):
            BM25 with the statistics of the quickstart SciFact corpus (kd.teachers.BM25Member via load_member) + the
            all-MiniLM-L6-v2 bi-encoder (6 layers), combined by zscore (`Combination.fit` on the members' scores of
            the warm-up pairs — the fitted μ/σ change the scores, not the work)
  <arch>    each efficient student exactly as its config builds it: `kd.training.build_student` on the DistillConfig
            of configs/students/<arch>.yaml — layers 0 and 5 of all-MiniLM-L6-v2 (top-bottom) for bert_cat, bert_dot,
            colbert and prettr (split_layer 1), and for TK the backbone's word-piece embeddings + 2 contextualisation
            layers of its own
The students are untrained (fresh heads, TK's own layers random): training changes weights, not shapes, so their
speed is the trained students' speed; their scores mean nothing here and no nDCG is reported.

The pairs are the first --queries DL'19 queries (sorted ids) × their BM25 top-100 (kd/resources/quickstart/dl19).
Every row is warmed up on --warmup-queries queries first. A timed round then goes query by query: each row
re-ranks that query's 100 candidates once, the row order alternating from query to query (teacher, students…,
then reversed), so a burst of other load falls on every row alike; --repeats rounds. A row's queries/s:
    best = queries / Σ_q (each query's fastest call)        mean = queries / (mean over rounds of Σ_q t_q)
Each call records the share of the machine's CPU that *other* processes used (kd.evaluation.OtherLoad); a call is
quiet when that share is ≤ --contention-threshold (0.1), and `best_quiet` uses quiet calls only (None unless every
query has one: the row is then `contended`, busy-machine numbers; --max-extra-repeats adds rounds while so). The
speed-up over the teacher compares like with like (best/best, mean/mean, best_quiet/best_quiet).
Target (checks, on best_quiet where both have it, else best): each student re-ranks ≥ 2× as fast as the teacher
(issue 15's bar for the quickstart's student).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, quiet_hf  # noqa: E402

sys.path.insert(0, str(ROOT))

ARCHS = ("bert_cat", "bert_dot", "colbert", "prettr", "tk")
CONFIGS = ROOT / "configs" / "students"
QUICKSTART = ROOT / "kd" / "resources" / "quickstart"
DL19 = QUICKSTART / "dl19"
TEACHER_CORPUS = QUICKSTART / "scifact" / "corpus.jsonl.gz"  # the quickstart's data.passages: bm25's statistics
TARGET_SPEEDUP = 2.0
DEPTH = 100


def student_config(arch: str, placeholder: Path) -> tuple:
    """(configs/students/<arch>.yaml as a DistillConfig, the teacher.scores it names when that file is absent, else
    None). Paths are relative to the repository root, as shipped. The bench reads no teacher scores (it builds
    students only), so before the quickstart has written the named file the config is validated with teacher.scores
    pointed at `placeholder` instead, and the JSON says so."""
    import yaml

    from kd.configs.distill import DistillConfig
    from kd.configs.loader import load_config

    path = CONFIGS / f"{arch}.yaml"
    named = ((yaml.safe_load(path.read_text()) or {}).get("teacher") or {}).get("scores")
    with contextlib.chdir(ROOT):
        if named and Path(named).is_file():
            return load_config(DistillConfig, path), None
        return load_config(DistillConfig, path, [f"teacher.scores={placeholder}"]), named


def build_students(archs, placeholder: Path) -> tuple[dict, dict]:
    """{arch: eval-mode student} built by kd.training.build_student from each config, and {arch: what built it}."""
    from kd.configs.catalog import saved_num_layers
    from kd.init import resolve_layers
    from kd.training import build_student

    models, facts = {}, {}
    for arch in archs:
        cfg, absent = student_config(arch, placeholder)
        models[arch] = build_student(cfg, None).eval()
        init = cfg.student.init
        total = saved_num_layers(cfg.student.backbone)
        kept = (resolve_layers(init.layers or "bottom", total, init.num_layers)
                if total and (init.layers is not None or init.num_layers is not None) else None)
        facts[arch] = {"config": str((CONFIGS / f"{arch}.yaml").relative_to(ROOT)), "backbone": cfg.student.backbone,
                       "backbone_layers": total, "backbone_layers_kept": kept, "options": dict(cfg.student.options),
                       "init": init.model_dump(exclude_none=True), "teacher_scores_absent": absent}
    return models, facts


def teacher_members() -> tuple[list, list[str]]:
    """The quickstart's teacher members (configs/quickstart.yaml teachers.given), loaded as the scoring job loads
    them: kd.configs.TeacherSpec → kd.teachers.load_member."""
    from kd.configs.catalog import MINILM_HUB_NAME
    from kd.configs.score_teachers import TeacherSpec
    from kd.teachers import load_member

    specs = [TeacherSpec(name="bm25", kind="bm25", corpus=str(TEACHER_CORPUS)),
             TeacherSpec(name="minilm", kind="bi", path=MINILM_HUB_NAME)]
    return [load_member(s.model_dump()) for s in specs], [s.name for s in specs]


def dl19_candidates(n_queries: int) -> tuple[dict, dict, dict]:
    """(candidates {qid: [docid × 100]}, queries, passages) for the first n DL'19 queries (sorted ids)."""
    from kd.data import load_passages, load_queries, read_trec_run
    from kd.evaluation import check_run_ids, top_candidates

    run_file = DL19 / "runs" / "BM25.top100.trec"
    queries = load_queries(DL19 / "queries.jsonl")
    passages = load_passages(DL19 / "corpus.jsonl.gz", show_progress=False)
    run = read_trec_run(run_file)
    qids = sorted(q for q in run if q in queries)
    if not 1 <= n_queries <= len(qids):
        raise SystemExit(f"--queries must be in [1, {len(qids)}] (DL'19 queries in {run_file}), got {n_queries}")
    cands = top_candidates(run, qids[:n_queries], DEPTH)
    check_run_ids(run_file, cands, queries, passages, queries_source=str(DL19 / "queries.jsonl"),
                  passages_source=str(DL19 / "corpus.jsonl.gz"))
    return cands, queries, passages


def fitted_teacher(members, names, cands, queries, passages, batch_size: int):
    """The TeacherEnsemble with a zscore Combination fitted on its members' scores of `cands` (the warm-up
    queries' pairs: the fitted μ/σ change the scores, not the work); returns (ensemble, seconds of the fitting)."""
    from kd.teachers import Combination, TeacherEnsemble

    pairs = [(q, d) for q, docs in cands.items() for d in docs]
    t0 = time.perf_counter()
    scores = TeacherEnsemble(members, names).predict_members([queries[q] for q, _ in pairs],
                                                             [passages[d] for _, d in pairs], batch_size=batch_size)
    combination = Combination.fit("zscore", names, scores)
    return TeacherEnsemble(members, names, combination), time.perf_counter() - t0


def time_round(models: dict, rows: list[str], cands, queries, passages, batch_size: int, runs: dict,
               round_no: int) -> None:
    """One round: query by query, each row re-ranks that query's candidates once (fp32), timed, with the other
    processes' CPU share; the row order alternates from query to query (and from round to round), so a burst of
    load falls on every row alike."""
    from kd.evaluation import OtherLoad, rerank

    for i, (qid, docs) in enumerate(cands.items()):
        for name in rows if (i + round_no) % 2 == 0 else rows[::-1]:
            load = OtherLoad()
            with load:
                t0 = time.perf_counter()
                run = rerank(models[name], {qid: docs}, queries, passages, batch_size=batch_size, precision="fp32")
                seconds = time.perf_counter() - t0
            scores = np.fromiter(run.get(qid, {}).values(), np.float64)
            if len(scores) != len(docs) or not np.isfinite(scores).all():
                raise RuntimeError(f"{name}: re-ranking query {qid} gave {len(scores)} scores for {len(docs)} "
                                   f"candidates, {int((~np.isfinite(scores)).sum())} not finite")
            runs[name].append({"round": round_no, "qid": qid, "seconds": seconds,
                               "other_processes_cpu_share": load.share})


def summarise(calls: list[dict], threshold: float) -> dict:
    """Queries/s of a row from its timed calls (one per query and round):
        best        = queries / Σ_q min_rounds t(q)       (each query's least disturbed call)
        mean        = queries / mean_rounds Σ_q t(q)
        best_quiet  = best over quiet calls (other processes' share ≤ threshold); None unless every query has one
    `contended`: best_quiet is None, i.e. some query was never timed on a quiet machine."""
    by_q: dict[str, list[dict]] = {}
    for c in calls:
        by_q.setdefault(c["qid"], []).append(c)
    rounds = sorted({c["round"] for c in calls})
    per_round = [sum(c["seconds"] for c in calls if c["round"] == r) for r in rounds]
    quiet = {q: [c["seconds"] for c in cs if c["other_processes_cpu_share"] is not None
                 and c["other_processes_cpu_share"] <= threshold] for q, cs in by_q.items()}
    best_quiet = len(by_q) / sum(min(v) for v in quiet.values()) if all(quiet.values()) else None
    shares = [c["other_processes_cpu_share"] for c in calls if c["other_processes_cpu_share"] is not None]
    return {"queries_per_s_best": len(by_q) / sum(min(c["seconds"] for c in cs) for cs in by_q.values()),
            "queries_per_s_mean": len(by_q) / float(np.mean(per_round)), "queries_per_s_best_quiet": best_quiet,
            "quiet_calls": sum(map(len, quiet.values())), "calls": len(calls),
            "other_processes_cpu_share_median": float(np.median(shares)) if shares else None,
            "contended": best_quiet is None, "runs": calls}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=10, help="DL'19 queries re-ranked per timed run (top-100 each)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed rounds (each query once per row per round); 2: ~2 min on 2 quiet cores, 3: ~3")
    ap.add_argument("--warmup-queries", type=int, default=1, help="queries each row re-ranks once, untimed, first")
    ap.add_argument("--batch-size", type=int, default=64, help="the evaluation job's default compute.batch_size")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--contention-threshold", type=float, default=0.1)
    ap.add_argument("--max-extra-repeats", type=int, default=0,
                    help="more rounds while some row has a query never timed quietly (a busy machine)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "students-cpu.json")
    args = ap.parse_args(argv)
    if args.repeats < 1 or not 1 <= args.warmup_queries <= args.queries:
        ap.error("need --repeats >= 1 and 1 <= --warmup-queries <= --queries")
    return args


def time_all(args, models: dict, warm, cands, queries, passages) -> tuple[dict, int]:
    """The warm-up round, then --repeats timed rounds (plus extra ones while a row is contended, up to
    --max-extra-repeats): ({row: its timed calls}, rounds run)."""
    import torch

    rows = list(models)
    with torch.inference_mode():
        time_round(models, rows, warm, queries, passages, args.batch_size, {r: [] for r in rows}, 0)  # warm-up
        runs = {r: [] for r in rows}
        rounds = 0
        while rounds < args.repeats or (rounds < args.repeats + args.max_extra_repeats and any(
                summarise(runs[r], args.contention_threshold)["contended"] for r in rows)):
            time_round(models, rows, cands, queries, passages, args.batch_size, runs, rounds)
            rounds += 1
            print(f"round {rounds}: " + ", ".join(
                f"{r} {args.queries / sum(c['seconds'] for c in runs[r] if c['round'] == rounds - 1):.2f} q/s"
                for r in rows), flush=True)
    return runs, rounds


def model_entries(args, models: dict, runs: dict, facts: dict, warm: dict, fit_seconds: float) -> dict:
    """{row: kd.eval_models.model_info + its speed (summarise) + what built it}."""
    from kd.eval_models import model_info

    out = {}
    for name, model in models.items():
        entry = {**model_info(model), **summarise(runs[name], args.contention_threshold)}
        if name == "teacher":
            entry.update(members_built_from={"bm25": str(TEACHER_CORPUS.relative_to(ROOT)),
                                             "minilm": "all-MiniLM-L6-v2 bi-encoder (6 layers)"},
                         combination_fit={"pairs": sum(map(len, warm.values())), "seconds": fit_seconds,
                                          **model.combination.to_dict()})
        else:
            entry.update(facts[name])
            if getattr(model, "contextualizer", None) is not None:  # TK: its own Transformer layers
                entry["own_layers"] = len(model.contextualizer.layers)
        out[name] = entry
    return out


def speedup_checks(archs, entries: dict) -> dict:
    """Each student's speed-up over the teacher (best/best, mean/mean, best_quiet/best_quiet, stored in its entry)
    and the checks: best_quiet where both have it, else best, against TARGET_SPEEDUP."""
    t = entries["teacher"]
    checks = {}
    for arch in archs:
        s = entries[arch]
        best = s["queries_per_s_best"] / t["queries_per_s_best"]
        quiet = (s["queries_per_s_best_quiet"] / t["queries_per_s_best_quiet"]
                 if s["queries_per_s_best_quiet"] and t["queries_per_s_best_quiet"] else None)
        s["speedup_vs_teacher"] = {"best": best, "mean": s["queries_per_s_mean"] / t["queries_per_s_mean"],
                                   "best_quiet": quiet}
        value = quiet if quiet is not None else best
        checks[f"{arch}_speedup_vs_teacher"] = {"value": value, "target": TARGET_SPEEDUP,
                                                "pass": value >= TARGET_SPEEDUP}
    return checks


def print_table(result: dict, threshold: float) -> None:
    head = f"{'model':<9} {'layers':>6} {'params':>11} {'q/s best':>9} {'q/s mean':>9} {'speed-up':>8}"
    print(head + "\n" + "-" * len(head))
    for name, m in result["models"].items():
        layers = m.get("own_layers", m["num_layers"])
        sp = m.get("speedup_vs_teacher", {}).get("best")
        print(f"{name:<9} {layers if layers is not None else '-':>6} {m['parameters']:>11,} "
              f"{m['queries_per_s_best']:>9.2f} {m['queries_per_s_mean']:>9.2f} "
              f"{'-' if sp is None else f'{sp:.2f}x':>8}{' *' if m['contended'] else ''}")
    if result["contended"]:
        print("* no quiet run: other processes used more than "
              f"{threshold:.0%} of the CPU during every timed run of this row")


def main(argv=None) -> int:
    args = parse_args(argv)
    out_path = args.out.resolve()
    quiet_hf()
    started = time.perf_counter()
    host = machine("cpu")  # loadavg_1m here is the load when the bench started
    with tempfile.TemporaryDirectory(prefix="kd-bench-students-") as tmp:
        placeholder = Path(tmp) / "teacher_scores.tsv"
        placeholder.write_text("")
        students, facts = build_students(args.archs, placeholder)
    members, names = teacher_members()
    cands, queries, passages = dl19_candidates(args.queries)
    warm = dict(list(cands.items())[: args.warmup_queries])
    teacher, fit_seconds = fitted_teacher(members, names, warm, queries, passages, args.batch_size)
    models = {"teacher": teacher, **students}
    setup_seconds = time.perf_counter() - started
    runs, rounds = time_all(args, models, warm, cands, queries, passages)

    result = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": host, "precision": "fp32",
        "inputs": {"queries": args.queries, "depth": DEPTH, "pairs": sum(map(len, cands.values())),
                   "qids": list(cands), "run": str((DL19 / "runs" / "BM25.top100.trec").relative_to(ROOT)),
                   "batch_size": args.batch_size, "warmup_queries": args.warmup_queries, "repeats": args.repeats,
                   "rounds": rounds, "contention_threshold": args.contention_threshold},
        "path": "kd.evaluation.rerank (the evaluation job's re-rank task), one query's top-100 per call: "
                "Ranker.predict length-sorted pair batches; bert_dot encodes each distinct query and passage once",
        "note": "students untrained: fresh heads (TK: its own layers too) change the scores, not the work; "
                "their speed is the trained students' speed; no nDCG here",
        "models": model_entries(args, models, runs, facts, warm, fit_seconds),
        "targets": {"speedup_vs_teacher": TARGET_SPEEDUP},
    }
    result["checks"] = speedup_checks(args.archs, result["models"])
    result["all_pass"] = all(c["pass"] for c in result["checks"].values())
    result["contended"] = any(m["contended"] for m in result["models"].values())
    result["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    result["seconds"] = {"setup": setup_seconds, "total": time.perf_counter() - started}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, args.contention_threshold)
    print(f"wrote {out_path} ({result['seconds']['total']:.0f} s, contended={result['contended']}, "
          f"all_pass={result['all_pass']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
