#!/usr/bin/env python3
"""Scoring benchmark: our cross-encoder scoring path vs sentence-transformers' CrossEncoder, and teacher-file parsing.

    python bench/scoring.py                    # CPU, 1000 real DL19 pairs -> bench/results/scoring-cpu.json
    python bench/scoring.py --device cuda      # GPU, 20000 pairs, bf16 autocast, MFU, + the unpadded row
    python bench/scoring.py --pairs 500 --batch-size 32 --out /tmp/x.json

Part 1 (cross-encoder throughput). One HF sequence-classification model (the packaged all-MiniLM-L6-v2 body plus a
1-label head seeded with torch.manual_seed(0)) is saved to a temp folder with its tokenizer and loaded twice:
  ours  kd.teachers.load_cross_encoder_teacher(folder, max_length=L).predict(queries, passages, batch_size=B)
  peer  sentence_transformers.CrossEncoder(folder, device=..., max_length=L).predict(pairs, batch_size=B)
  ours_unpadded (default on CUDA, --unpadded-row elsewhere) the same kd call with the model option `unpadded: true`
        (kd.models.unpadded: real tokens packed, varlen attention: flash-attn / nested SDPA / per-sequence loop)
("ours" runs with `unpadded: false`, the padded path, on every device.)
Same max length, batch size, device, precision and pairs (TREC DL 2019 queries x their BM25 top-100 passages, then the
other first-stage runs if more pairs are asked for). Both are warmed up, then timed in alternating order
(ours, peer, ours, peer, ...); best and mean pairs/s are reported (wall clock, plus the process CPU time of each
run, which is less sensitive to other load on a shared machine). Ours tokenizes every pair once (Ranker.pretokenize),
batches by exact token count and keeps scores on the device until the end; the peer sorts by character length and
tokenizes per batch. Score agreement is checked on all N pairs (the peer
applies Sigmoid to 1-label models; it is undone with logit) and exactly on a subset (peer with activation_fn=Identity).
Each row's `mfu_best` = 2 x non-embedding params x padded tokens/pair x pairs/s / peak (the work that row did,
attention's L^2 excluded). The top-level `mfu` is the model-FLOP utilisation of the fastest kd row:
(2 x non-embedding params x real tokens/pair + 4 x layers x hidden x mean(real len^2)) x pairs/s / peak — the FLOPs the
model needs, padding not counted, attention included — and `speedup_vs_peer` is that row's best pairs/s / the peer's.

Part 2 (teacher-file parsing). A seeded synthetic 1M-line teacher file (pos<TAB>neg<TAB>qid<TAB>pos_pid<TAB>neg_pid) is
parsed with kd.data.read_teacher_scores(path, ids="int") and with a naive `line.split('\t')` loop (lines/s).

Everything in the JSON is measured by the run; only the targets and the default peak FLOP/s are constants.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import CpuWindow, default_data_dir, machine, quiet_hf  # noqa: E402
from _scoring_model import (  # noqa: E402
    TokenCounter, load_paths, load_unpadded, non_embedding_params, precision_ctx, sync,
)
from _scoring_parsing import bench_parsing, summary  # noqa: E402

TARGETS = {"cpu_speedup_min": 1.0, "gpu_speedup_min": 1.5, "gpu_mfu_min": 0.5, "parse_lines_per_s_min": 1_000_000}
KD_ROWS = ("ours", "ours_unpadded")
MFU_FORMULA = ("(2 * non_embedding_params * real_tokens_per_pair + 4 * layers * hidden * mean(real_len^2)) * pairs_per_s"
               " / (peak_tflops * 1e12)")
H100_SXM_BF16_DENSE_TFLOPS = 989.0
RUN_ORDER = ("BM25", "BM25_RM3", "D_BERT_KD_TASB", "SPLADE_P_P_ENSEMBLE_DISTIL", "OPEN_AI_ADA2")
# this script's JSON keys for machine facts that _common.machine names otherwise (committed results use these)
MACHINE_KEYS = {"torch_threads": "torch_num_threads", "torch_interop_threads": "torch_num_interop_threads",
                "env_TOKENIZERS_PARALLELISM": "TOKENIZERS_PARALLELISM", "env_OMP_NUM_THREADS": "OMP_NUM_THREADS"}


def machine_info(device: torch.device) -> dict:
    """_common.machine under this script's keys, plus device_name: the GPU on CUDA, else the CPU model."""
    info = machine(str(device), packages=("transformers", "sentence_transformers"), names=MACHINE_KEYS)
    info["device_name"] = info.get("gpu") if device.type == "cuda" else info["cpu_model"]
    return info


# ------------------------------------------------------------------------------------------------------------ data
def load_pairs(data_dir: Path, n: int) -> tuple[list[str], list[str], dict]:
    """First n (query, passage) pairs of the DL19 candidate lists: BM25 first, then the other runs (new pairs only)."""
    from kd.data import load_passages, load_queries

    dl19 = data_dir / "trec-dl-2019"
    queries = load_queries(dl19 / "queries.jsonl")
    corpus = load_passages(dl19 / "corpus.jsonl", show_progress=False)  # title + " " + text, as the jobs join it
    runs = sorted((dl19 / "runs").glob("*.top100.trec"))
    by_name = {p.name.split(".")[0]: p for p in runs}
    ordered = [by_name[k] for k in RUN_ORDER if k in by_name]
    ordered += [p for p in runs if p.name.split(".")[0] not in RUN_ORDER]
    seen, pairs, used = set(), [], []
    for run in ordered:
        if len(pairs) >= n:
            break
        used.append(run.name)
        with run.open() as f:
            for line in f:
                qid, _, pid, *_ = line.split()
                if (qid, pid) in seen or qid not in queries or pid not in corpus:
                    continue
                seen.add((qid, pid))
                pairs.append((queries[qid], corpus[pid]))
                if len(pairs) >= n:
                    break
    unique = len(pairs)
    if unique == 0:
        raise SystemExit(f"no pairs found under {dl19}")
    while len(pairs) < n:  # more pairs asked for than the runs hold: repeat (recorded in the JSON)
        pairs.extend(pairs[: n - len(pairs)])
    q = [p[0] for p in pairs]
    d = [p[1] for p in pairs]
    meta = {
        "source": str(dl19),
        "runs_used": used,
        "pairs": n,
        "unique_pairs": unique,
        "repeated": n > unique,
        "mean_query_chars": statistics.fmean(map(len, q)),
        "mean_passage_chars": statistics.fmean(map(len, d)),
    }
    return q, d, meta


# ------------------------------------------------------------------------------------------------ part 1: scoring
class Timings:
    """Each row's timed runs: wall seconds, process CPU seconds, other processes' share of the machine (CpuWindow)."""

    def __init__(self, impls, threshold: float):
        self.impls, self.threshold = impls, threshold
        self.seconds = {name: [] for name in impls}
        self.cpu = {name: [] for name in impls}
        self.others = {name: [] for name in impls}
        self.out, self.repeats_run = {}, 0

    def contended(self) -> bool:
        """Some row has no run in which the machine was quiet (other share <= threshold)."""
        return any(all(x is not None and x > self.threshold for x in self.others[name]) for name in self.impls)

    def add(self, name: str, window: CpuWindow, res) -> None:
        self.seconds[name].append(window.seconds)
        self.cpu[name].append(window.own_cpu_s)
        self.others[name].append(window.other_share)
        self.out[name] = res


def time_rows(args, device: torch.device, run, n: int) -> Timings:
    """--repeats alternating rounds (ours, peer, ours, ...), plus up to --max-extra-repeats while some row has no
    quiet run; run(name) scores all n pairs through that row."""
    t = Timings(args.impls, args.contention_threshold)
    while t.repeats_run < args.repeats or (t.repeats_run < args.repeats + args.max_extra_repeats and t.contended()):
        t.repeats_run += 1
        for name in args.impls:
            gc.collect()
            sync(device)
            with CpuWindow() as w:
                with torch.inference_mode(), precision_ctx(args.precision, device):
                    res = run(name)
                sync(device)
            t.add(name, w, res)
            print(f"  rep {t.repeats_run}{'' if t.repeats_run <= args.repeats else ' (extra: machine busy)'} "
                  f"{name:12s}: {n / w.seconds:9.1f} pairs/s (process CPU {w.own_cpu_s:.1f} s for "
                  f"{w.seconds:.1f} s wall; other processes used {w.other_share or 0:.0%} of the machine)", flush=True)
    return t


def tokenize_seconds(ours, peer, queries, passages, pairs, bs: int) -> dict:
    """Tokenization-only cost of each path, on the batches each path makes (diagnostic)."""
    tok_time = {}
    t0 = time.perf_counter()
    ours.pretokenize(list(queries), list(passages))  # as Ranker.predict: every pair once, unpadded
    tok_time["ours"] = time.perf_counter() - t0
    porder = np.argsort([-(len(q) + len(p)) for q, p in pairs])  # as CrossEncoder._inference
    t0 = time.perf_counter()
    for s in range(0, len(pairs), bs):
        type(peer).preprocess(peer, [pairs[i] for i in porder[s : s + bs]])
    tok_time["peer"] = time.perf_counter() - t0
    return tok_time


def agreement(args, device, ours, peer, out: dict, queries, passages, pairs, activation: str | None) -> dict:
    """All N pairs (the peer's Sigmoid undone with logit in float64) + a subset scored with the peer's raw logits."""
    bs = args.batch_size
    ours_scores = out["ours"].double().numpy()
    peer_out = np.asarray(out["peer"], dtype=np.float64)
    if activation == "Sigmoid":
        with np.errstate(divide="ignore"):
            peer_scores = np.log(peer_out) - np.log1p(-peer_out)
        how = "peer output is Sigmoid(logit) (its default for 1-label models); undone with log p - log(1-p) in float64"
    else:
        peer_scores = peer_out
        how = "peer output compared as is"
    sub = min(len(pairs), args.agreement_subset)
    with torch.inference_mode(), precision_ctx(args.precision, device):
        raw_peer = np.asarray(
            peer.predict(pairs[:sub], batch_size=bs, show_progress_bar=False, activation_fn=torch.nn.Identity()),
            dtype=np.float64,
        )
        raw_ours = ours.predict(queries[:sub], passages[:sub], batch_size=bs).double().numpy()
    finite = np.isfinite(peer_scores)
    diff = np.abs(ours_scores[finite] - peer_scores[finite])
    raw_diff = float(np.abs(raw_ours - raw_peer).max())
    tol = 1e-3 if args.precision == "fp32" else 5e-2
    return {
        "method": how,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "non_finite_after_undo": int((~finite).sum()),
        "pearson": float(np.corrcoef(ours_scores[finite], peer_scores[finite])[0, 1]),
        "spearman": _spearman(ours_scores[finite], peer_scores[finite]),
        "raw_subset_pairs": sub,
        "raw_subset_max_abs_diff": raw_diff,
        "raw_subset_note": "peer re-run with activation_fn=Identity(): raw logits vs ours, no inversion",
        "ours_score_range": [float(ours_scores.min()), float(ours_scores.max())],
        "tolerance": tol,
        "agree": bool(diff.max() <= tol and raw_diff <= tol),
    }


def row_numbers(args, name: str, t: Timings, n: int, tok_time: dict, toks: dict, ne_params: int) -> dict:
    """One implementation's entry: rates (all / quiet runs), CPU, tokenization, FLOPs and MFU."""
    rates = [n / s for s in t.seconds[name]]
    tok_time = {**tok_time, "ours_unpadded": tok_time["ours"]}  # the same pretokenize
    row = {
        "pairs_per_s": summary(rates),
        "seconds": t.seconds[name],
        "process_cpu_seconds": t.cpu[name],
        "pairs_per_cpu_s_best": max(n / c for c in t.cpu[name]),
        "other_processes_cpu_share": t.others[name],
        "pairs_per_s_best_quiet": max((r for r, o in zip(rates, t.others[name]) if o is not None and o <= t.threshold),
                                      default=None),
        "tokenize_only_seconds": tok_time[name],
        "tokenize_share_of_best_run": tok_time[name] / min(t.seconds[name]),
        **toks[name],
    }
    # FLOPs: 2 x non-embedding params x tokens this path ran its layers on (attention L^2 excluded): the padded
    # batch, or the real tokens only for the unpadded row
    ran = toks[name]["real_tokens_per_pair" if name == "ours_unpadded" else "padded_tokens_per_pair"]
    flops_pair = 2.0 * ne_params * ran
    row["flops_per_pair"] = flops_pair
    row["achieved_tflops_best"] = flops_pair * max(rates) / 1e12
    row["achieved_tflops_mean"] = flops_pair * statistics.fmean(rates) / 1e12
    model_flops = 2.0 * ne_params * toks[name]["real_tokens_per_pair"] + \
        4.0 * args.layers * args.hidden * toks[name]["real_tokens_squared_per_pair"]
    row["model_flops_per_pair"] = model_flops
    row["model_tflops_best"] = model_flops * max(rates) / 1e12
    if args.peak_tflops:
        row["mfu_best"] = row["achieved_tflops_best"] / args.peak_tflops
        row["mfu_mean"] = row["achieved_tflops_mean"] / args.peak_tflops
        row["mfu_model_best"] = row["model_tflops_best"] / args.peak_tflops
    return row


def bench_scoring(args, device: torch.device, queries: list[str], passages: list[str]) -> dict:
    pairs = [[q, p] for q, p in zip(queries, passages)]
    n, bs = len(pairs), args.batch_size
    ours, peer, tmp, settings = load_paths(args, device)
    kd_models = {"ours": ours}
    if "ours_unpadded" in args.impls:
        kd_models["ours_unpadded"], extra = load_unpadded(args, device, Path(tmp.name))
        settings.update(extra)
    total_params, ne_params = non_embedding_params(ours.encoder)
    args.layers, args.hidden = ours.encoder.config.num_hidden_layers, ours.encoder.config.hidden_size

    # counting wrappers (instance attributes; one counter add per batch)
    counters = {name: TokenCounter() for name in args.impls}
    for name, model in kd_models.items():  # kd tokenizes once, up front: count what its forward runs
        model.forward = counters[name].wrap_forward(model.forward)
    peer.preprocess = counters["peer"].wrap(peer.preprocess)

    def run(name, q=queries, d=passages, p=pairs):
        if name in kd_models:
            return kd_models[name].predict(q, d, batch_size=bs)
        return peer.predict(p, batch_size=bs, show_progress_bar=False, convert_to_numpy=True)

    # warm-up: a few batches each (allocator, kernels, autotuning)
    w = min(n, bs * args.warmup_batches)
    for name in args.impls:
        with torch.inference_mode(), precision_ctx(args.precision, device):
            run(name, queries[:w], passages[:w], pairs[:w])
    sync(device)
    for c in counters.values():
        c.reset()

    load_before = os.getloadavg()
    t = time_rows(args, device, run, n)
    load_after = os.getloadavg()
    toks = {name: counters[name].summary() for name in args.impls}
    tok_time = tokenize_seconds(ours, peer, queries, passages, pairs, bs)
    res = {
        "settings": settings,
        "params": {"total": total_params, "non_embedding": ne_params},
        "loadavg_before_after": [list(load_before), list(load_after)],
        "max_other_processes_cpu_share": max((x for v in t.others.values() for x in v if x is not None), default=None),
        "repeats_run": t.repeats_run,
        "contention_threshold": t.threshold,
        # contended: some row has no quiet run, so its best number is a busy-machine number
        "contended": bool(t.contended()),
    }
    impl = {name: row_numbers(args, name, t, n, tok_time, toks, ne_params) for name in args.impls}
    res["implementations"] = impl
    res["speedup_ours_over_peer"] = {
        "best": impl["ours"]["pairs_per_s"]["best"] / impl["peer"]["pairs_per_s"]["best"],
        "mean": impl["ours"]["pairs_per_s"]["mean"] / impl["peer"]["pairs_per_s"]["mean"],
        "cpu_time_best": impl["ours"]["pairs_per_cpu_s_best"] / impl["peer"]["pairs_per_cpu_s_best"],
        "best_quiet": _ratio(impl["ours"]["pairs_per_s_best_quiet"], impl["peer"]["pairs_per_s_best_quiet"]),
    }
    if "ours_unpadded" in impl:
        res["speedup_ours_unpadded_over_peer"] = {
            "best": impl["ours_unpadded"]["pairs_per_s"]["best"] / impl["peer"]["pairs_per_s"]["best"],
            "mean": impl["ours_unpadded"]["pairs_per_s"]["mean"] / impl["peer"]["pairs_per_s"]["mean"],
        }
        res["speedup_unpadded_over_padded"] = (impl["ours_unpadded"]["pairs_per_s"]["best"]
                                               / impl["ours"]["pairs_per_s"]["best"])
        res["unpadded_agreement"] = unpadded_agreement(args, t.out)
    res["agreement"] = agreement(args, device, ours, peer, t.out, queries, passages, pairs,
                                 settings["peer_activation_fn"])
    if args.peak_tflops:
        res["peak_tflops"] = args.peak_tflops
        res["mfu_note"] = (
            "FLOPs/pair = 2 x non-embedding params x mean padded tokens/pair (counted from each path's own tokenizer "
            "output); attention score/context FLOPs excluded; peak = --peak-tflops (dense)"
        )
    tmp.cleanup()
    return res


def unpadded_agreement(args, out: dict) -> dict:
    """The unpadded row's scores vs the padded row's, all N pairs (same model, same precision)."""
    diff = (out["ours_unpadded"].double() - out["ours"].double()).abs()
    tol = 1e-4 if args.precision == "fp32" else 5e-2
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "tolerance": tol,
            "agree": bool(diff.max() <= tol)}


def headline(args, scoring: dict) -> dict:
    """The top-level `speedup_vs_peer` and `mfu`: the fastest kd row's best pairs/s over the peer's, and its
    model-FLOP utilisation (None without a peak)."""
    impl = scoring["implementations"]
    row = max((r for r in KD_ROWS if r in impl), key=lambda r: impl[r]["pairs_per_s"]["best"])
    return {
        "speedup_vs_peer": impl[row]["pairs_per_s"]["best"] / impl["peer"]["pairs_per_s"]["best"],
        "speedup_vs_peer_row": row,
        "mfu": impl[row].get("mfu_model_best"),
        "mfu_flop_formula": MFU_FORMULA,
        "peak_tflops": args.peak_tflops,
        "pairs_per_s": impl[row]["pairs_per_s"]["best"],
        "peer_pairs_per_s": impl["peer"]["pairs_per_s"]["best"],
    }


def _ratio(a, b):
    return a / b if a is not None and b else None


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


# ----------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pairs", type=int, default=None,
                    help="pairs to score (default: 1000 on CPU, i.e. 10 DL19 queries x BM25 top-100, so the whole CPU "
                         "run stays under ~3 min on 2 quiet cores; 20000 on CUDA)")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size (default: 32 on CPU, 256 on CUDA)")
    ap.add_argument("--max-length", type=int, default=256, help="max tokens per pair, both paths (default 256)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument(
        "--precision", choices=("fp32", "autocast-bf16", "autocast-fp16", "bf16", "fp16"), default=None,
        help="fp32 (CPU default), autocast-bf16 (CUDA default), autocast-fp16, or weights cast to bf16/fp16",
    )
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per implementation, alternating (default 2)")
    ap.add_argument("--max-extra-repeats", type=int, default=2,
                    help="extra alternating rounds, run only while some row has no quiet run (default 2)")
    ap.add_argument("--contention-threshold", type=float, default=0.1,
                    help="a run is 'quiet' when other processes used at most this share of the machine (default 0.1)")
    ap.add_argument("--warmup-batches", type=int, default=3)
    ap.add_argument("--agreement-subset", type=int, default=128, help="pairs re-scored for the raw-logit check")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help=f"peak dense FLOP/s in TFLOP/s for MFU (CUDA default {H100_SXM_BF16_DENSE_TFLOPS}, H100 SXM "
                         "bf16); on CPU MFU is skipped unless given")
    ap.add_argument("--unpadded-row", action=argparse.BooleanOptionalAction, default=None,
                    help="time the row ours_unpadded (kd with `unpadded: true`; default: on CUDA only)")
    ap.add_argument("--parse-lines", type=int, default=1_000_000)
    ap.add_argument("--parse-repeats", type=int, default=2)
    ap.add_argument("--skip-parsing", action="store_true")
    ap.add_argument("--skip-scoring", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default ../shared/data)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/scoring-<device>.json)")
    args = ap.parse_args(argv)
    gpu = args.device == "cuda"
    args.pairs = args.pairs or (20_000 if gpu else 1_000)
    args.batch_size = args.batch_size or (256 if gpu else 32)
    if args.unpadded_row is None:
        args.unpadded_row = gpu
    args.impls = ("ours", "ours_unpadded", "peer") if args.unpadded_row else ("ours", "peer")
    args.precision = args.precision or ("autocast-bf16" if gpu else "fp32")
    if gpu and args.peak_tflops is None:
        args.peak_tflops = H100_SXM_BF16_DENSE_TFLOPS
    args.data_dir = args.data_dir or default_data_dir("trec-dl-2019")
    args.out = args.out or (ROOT / "bench" / "results" / f"scoring-{args.device}.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    quiet_hf()
    t_start = time.perf_counter()
    report = {
        "benchmark": "bench/scoring.py",
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(device),
        "targets": dict(TARGETS),
    }
    checks = {}
    if not args.skip_scoring:
        queries, passages, meta = load_pairs(args.data_dir, args.pairs)
        print(f"scoring {meta['pairs']} pairs ({meta['unique_pairs']} unique; {', '.join(meta['runs_used'])}) on "
              f"{device} [{report['machine']['device_name']}], batch {args.batch_size}, max_length {args.max_length}, "
              f"{args.precision}, torch threads {torch.get_num_threads()}", flush=True)
        report["data"] = meta
        report["scoring"] = bench_scoring(args, device, queries, passages)
        report.update(headline(args, report["scoring"]))
        sp = report["speedup_vs_peer"]
        key = "gpu_speedup_min" if device.type == "cuda" else "cpu_speedup_min"
        checks["speedup"] = {"target": TARGETS[key], "measured_best": sp, "pass": bool(sp >= TARGETS[key])}
        checks["scores_agree"] = {"pass": report["scoring"]["agreement"]["agree"]}
        if "unpadded_agreement" in report["scoring"]:
            checks["unpadded_agrees"] = {"pass": report["scoring"]["unpadded_agreement"]["agree"]}
        if device.type == "cuda" and report["mfu"] is not None:
            checks["mfu"] = {"target": TARGETS["gpu_mfu_min"], "measured_best": report["mfu"],
                             "pass": bool(report["mfu"] >= TARGETS["gpu_mfu_min"])}
    if not args.skip_parsing:
        print(f"parsing a {args.parse_lines:,}-line teacher file", flush=True)
        report["parsing"] = bench_parsing(args)
        lps = report["parsing"]["ours"]["lines_per_s"]["best"]
        checks["parsing"] = {
            "target": TARGETS["parse_lines_per_s_min"], "measured_best": lps,
            "pass": bool(lps >= TARGETS["parse_lines_per_s_min"] and report["parsing"]["results_identical"]),
        }
    report["checks"] = checks
    report["all_pass"] = all(c["pass"] for c in checks.values())
    report["wall_seconds"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}  ({report['wall_seconds']:.0f} s)")
    return 0


def print_table(r: dict) -> None:
    print()
    if "scoring" in r:
        s = r["scoring"]
        mfu = "peak_tflops" in s
        print(f"{'cross-encoder':14s} {'best p/s':>10s} {'mean p/s':>10s} {'pad tok/pair':>12s} {'pad eff':>8s} "
              f"{'tok s':>7s} {'TFLOP/s':>8s}" + (f" {'MFU':>6s}" if mfu else ""))
        for name, label in (("ours", "ours (kd)"), ("ours_unpadded", "ours unpadded"), ("peer", "CrossEncoder")):
            if name not in s["implementations"]:
                continue
            i = s["implementations"][name]
            print(f"{label:14s} {i['pairs_per_s']['best']:10.1f} {i['pairs_per_s']['mean']:10.1f} "
                  f"{i['padded_tokens_per_pair']:12.1f} {i['padding_efficiency']:8.3f} "
                  f"{i['tokenize_only_seconds']:7.2f} "
                  f"{i['achieved_tflops_best']:8.3f}" + (f" {i['mfu_best']:6.1%}" if mfu else ""))
        if "speedup_ours_unpadded_over_peer" in s:
            print(f"unpadded: {s['speedup_ours_unpadded_over_peer']['best']:.3f}x the peer, "
                  f"{s['speedup_unpadded_over_padded']:.3f}x the padded row, max|diff| vs padded "
                  f"{s['unpadded_agreement']['max_abs_diff']:.2e}")
        if r.get("mfu") is not None:
            print(f"headline: {r['speedup_vs_peer']:.3f}x the peer ({r['speedup_vs_peer_row']}), model-FLOP MFU "
                  f"{r['mfu']:.1%} of {r['peak_tflops']:.0f} TFLOP/s")
        a = s["agreement"]
        print(f"speedup ours/peer: best {s['speedup_ours_over_peer']['best']:.3f}x, mean "
              f"{s['speedup_ours_over_peer']['mean']:.3f}x | scores: max|diff| {a['max_abs_diff']:.2e} (raw subset "
              f"{a['raw_subset_max_abs_diff']:.2e}), spearman {a['spearman']:.6f}")
        if s.get("contended"):
            print(f"WARNING: some row had no quiet run (other processes used up to "
                  f"{s['max_other_processes_cpu_share']:.0%} of the machine); wall-clock numbers are unreliable, rerun "
                  "on a quiet machine")
    if "parsing" in r:
        p = r["parsing"]
        print(f"teacher parsing ({p['lines']:,} lines): ours {p['ours']['lines_per_s']['best']:,.0f} lines/s, naive "
              f"{p['naive']['lines_per_s']['best']:,.0f} lines/s ({p['speedup_ours_over_naive']:.1f}x), identical: "
              f"{p['results_identical']}")
    for k, c in r["checks"].items():
        print(f"check {k:13s} {'PASS' if c['pass'] else 'FAIL'}"
              + (f"  (measured {c['measured_best']:.3g}, target >= {c['target']:.3g})" if "target" in c else ""))


if __name__ == "__main__":
    sys.exit(main())
