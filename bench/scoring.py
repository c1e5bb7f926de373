#!/usr/bin/env python3
"""Scoring benchmark: our cross-encoder scoring path vs sentence-transformers' CrossEncoder, and teacher-file parsing.

    python bench/scoring.py                    # CPU, 1000 real DL19 pairs -> bench/results/scoring-cpu.json
    python bench/scoring.py --device cuda      # GPU, 20000 pairs, bf16 autocast, MFU
    python bench/scoring.py --pairs 500 --batch-size 32 --out /tmp/x.json

Part 1 (cross-encoder throughput). One HF sequence-classification model (the packaged all-MiniLM-L6-v2 body plus a
1-label head seeded with torch.manual_seed(0)) is saved to a temp folder with its tokenizer and loaded twice:
  ours  kd.teachers.load_cross_encoder_teacher(folder, max_length=L).predict(queries, passages, batch_size=B)
  peer  sentence_transformers.CrossEncoder(folder, device=..., max_length=L).predict(pairs, batch_size=B)
Same max length, batch size, device, precision and pairs (TREC DL 2019 queries x their BM25 top-100 passages, then the
other first-stage runs if more pairs are asked for). Both are warmed up, then timed in alternating order
(ours, peer, ours, peer, ...); best and mean pairs/s are reported (wall clock, plus the process CPU time of each
run, which is less sensitive to other load on a shared machine). Ours tokenizes every pair once (Ranker.pretokenize),
batches by exact token count and keeps scores on the device until the end; the peer sorts by character length and
tokenizes per batch. Score agreement is checked on all N pairs (the peer
applies Sigmoid to 1-label models; it is undone with logit) and exactly on a subset (peer with activation_fn=Identity).
On CUDA, MFU = 2 x non-embedding params x padded tokens/pair x pairs/s / peak FLOP/s (attention's L^2 term excluded).

Part 2 (teacher-file parsing). A seeded synthetic 1M-line teacher file (pos<TAB>neg<TAB>qid<TAB>pos_pid<TAB>neg_pid) is
parsed with kd.data.read_teacher_scores(path, ids="int") and with a naive `line.split('\t')` loop (lines/s).

Everything in the JSON is measured by the run; only the targets and the default peak FLOP/s are constants.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import cpu_model, default_data_dir, quiet_hf  # noqa: E402

TARGETS = {"cpu_speedup_min": 1.0, "gpu_speedup_min": 1.5, "parse_lines_per_s_min": 1_000_000}
H100_SXM_BF16_DENSE_TFLOPS = 989.0
RUN_ORDER = ("BM25", "BM25_RM3", "D_BERT_KD_TASB", "SPLADE_P_P_ENSEMBLE_DISTIL", "OPEN_AI_ADA2")


# ------------------------------------------------------------------------------------------------------- helpers
def _git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except Exception:
        return {"commit": None, "dirty": None}


def machine_info(device: torch.device) -> dict:
    import sentence_transformers
    import transformers

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "device": str(device),
        "device_name": cpu_model(),
        "git": _git_state(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_sm_count=props.multi_processor_count,
        )
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), to measure other load per run."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _summary(values: list[float]) -> dict:
    return {"best": max(values), "mean": statistics.fmean(values), "runs": values}


# ------------------------------------------------------------------------------------------------------------ data
def _read_jsonl(path: Path) -> dict[str, dict]:
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                out[str(obj["_id"])] = obj
    return out


def load_pairs(data_dir: Path, n: int) -> tuple[list[str], list[str], dict]:
    """First n (query, passage) pairs of the DL19 candidate lists: BM25 first, then the other runs (new pairs only)."""
    dl19 = data_dir / "trec-dl-2019"
    queries = {k: v["text"] for k, v in _read_jsonl(dl19 / "queries.jsonl").items()}
    corpus = _read_jsonl(dl19 / "corpus.jsonl")
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
                doc = corpus[pid]
                text = (doc.get("title") or "").strip()
                text = f"{text} {doc['text']}".strip() if text else doc["text"]
                pairs.append((queries[qid], text))
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


# --------------------------------------------------------------------------------------------------- model set-up
def build_model_folder(folder: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kd.models.backbone import default_backbone

    src = default_backbone()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)


def non_embedding_params(hf_model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, parameters outside the token/position/type embedding tables)."""
    total = sum(p.numel() for p in hf_model.parameters())
    emb = sum(m.weight.numel() for m in hf_model.modules() if isinstance(m, torch.nn.Embedding))
    return total, total - emb


class TokenCounter:
    """Counts padded and real tokens of every batch a scoring path tokenizes (wraps its tokenize/preprocess)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.padded = self.real = self.pairs = self.batches = 0
        self.max_len = 0

    def add(self, features: dict):
        ids = features["input_ids"]
        self.padded += ids.numel()
        self.real += int(features["attention_mask"].sum())
        self.pairs += ids.shape[0]
        self.batches += 1
        self.max_len = max(self.max_len, ids.shape[1])

    def wrap_forward(self, fn):
        """Count the padded batch a model's forward receives (keyword tensors input_ids/attention_mask)."""
        def wrapped(*args, **kwargs):
            self.add(kwargs)
            return fn(*args, **kwargs)

        return wrapped

    def wrap(self, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.add(out)
            return out

        return wrapped

    def summary(self) -> dict:
        p = max(self.pairs, 1)
        return {
            "padded_tokens_per_pair": self.padded / p,
            "real_tokens_per_pair": self.real / p,
            "padding_efficiency": self.real / max(self.padded, 1),
            "batches": self.batches,
            "max_batch_length": self.max_len,
        }


def _precision_ctx(precision: str, device: torch.device):
    if precision.startswith("autocast-"):
        dtype = torch.bfloat16 if precision.endswith("bf16") else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ part 1: scoring
def bench_scoring(args, device: torch.device, queries: list[str], passages: list[str]) -> dict:
    from sentence_transformers import CrossEncoder

    from kd.teachers import load_cross_encoder_teacher

    pairs = [[q, p] for q, p in zip(queries, passages)]
    n, bs = len(pairs), args.batch_size
    tmp = tempfile.TemporaryDirectory(prefix="kd-bench-ce-")
    folder = Path(tmp.name)
    build_model_folder(folder)

    ours = load_cross_encoder_teacher(folder, max_length=args.max_length).to(device)
    peer = CrossEncoder(str(folder), device=str(device), max_length=args.max_length)
    cast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    if cast is not None:
        ours.to(cast)
        peer.to(cast)
    ours.eval()
    peer.eval()

    peer_hf = peer[0].auto_model if hasattr(peer[0], "auto_model") else peer[0].model
    settings = {
        "max_length": args.max_length,
        "batch_size": bs,
        "precision": args.precision,
        "repeats": args.repeats,
        "warmup_batches": args.warmup_batches,
        "timed_order": "per repeat: " + ", ".join(args.impls),
        "ours_call": f"load_cross_encoder_teacher(folder, max_length={args.max_length}).predict(q, p, batch_size={bs})",
        "peer_call": f"CrossEncoder(folder, device={str(device)!r}, max_length={args.max_length})"
                     f".predict(pairs, batch_size={bs}, show_progress_bar=False)",
        "ours_attn_implementation": ours.encoder.config._attn_implementation,
        "peer_attn_implementation": peer_hf.config._attn_implementation,
        "ours_max_length": ours.options["max_length"],
        "peer_max_length": getattr(peer, "max_seq_length", None),
        "peer_activation_fn": type(peer.activation_fn).__name__ if peer.activation_fn is not None else None,
        "ours_tokenizer": type(ours.tokenizer).__name__,
        "peer_tokenizer": type(peer.tokenizer).__name__,
        "peer_input": "list of [query, passage] lists (built before timing)",
        "ours_input": "two aligned lists (queries, passages)",
    }
    total_params, ne_params = non_embedding_params(ours.encoder)

    # counting wrappers (instance attributes; one counter add per batch)
    counters = {name: TokenCounter() for name in ("ours", "peer")}
    ours.forward = counters["ours"].wrap_forward(ours.forward)  # ours tokenizes once, up front: count what it runs
    peer.preprocess = counters["peer"].wrap(peer.preprocess)

    def run(name, q, d, p):
        if name == "ours":
            return ours.predict(q, d, batch_size=bs)
        return peer.predict(p, batch_size=bs, show_progress_bar=False, convert_to_numpy=True)

    # warm-up: a few batches each (allocator, kernels, autotuning)
    w = min(n, bs * args.warmup_batches)
    for name in args.impls:
        with torch.inference_mode(), _precision_ctx(args.precision, device):
            run(name, queries[:w], passages[:w], pairs[:w])
    _sync(device)
    for c in counters.values():
        c.reset()

    times = {name: [] for name in args.impls}
    cpu_times = {name: [] for name in args.impls}
    others = {name: [] for name in args.impls}
    out = {}
    load_before = os.getloadavg()
    quiet = args.contention_threshold

    def contended_everywhere() -> bool:  # some row has no run in which the machine was quiet
        return any(all(x is not None and x > quiet for x in others[name]) for name in args.impls)

    rep = 0
    while rep < args.repeats or (rep < args.repeats + args.max_extra_repeats and contended_everywhere()):
        rep += 1
        for name in args.impls:
            gc.collect()
            _sync(device)
            b0, c0, t0 = _machine_busy_seconds(), time.process_time(), time.perf_counter()
            with torch.inference_mode(), _precision_ctx(args.precision, device):
                res = run(name, queries, passages, pairs)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
            b1 = _machine_busy_seconds()
            # share of the machine's CPUs used by OTHER processes during this run (0 = quiet machine)
            others[name].append(
                None if b0 is None else max(0.0, (b1 - b0 - cpu_times[name][-1]) / (times[name][-1] * os.cpu_count()))
            )
            out[name] = res
            print(f"  rep {rep}{'' if rep <= args.repeats else ' (extra: machine busy)'} {name:12s}: "
                  f"{n / times[name][-1]:9.1f} pairs/s (process CPU {cpu_times[name][-1]:.1f} s for "
                  f"{times[name][-1]:.1f} s wall; other processes used {others[name][-1] or 0:.0%} of the machine)",
                  flush=True)
    load_after = os.getloadavg()

    toks = {name: counters[name].summary() for name in args.impls}

    # tokenization-only cost of each path, on the batches each path makes (diagnostic)
    tok_time = {}
    t0 = time.perf_counter()
    ours.pretokenize(list(queries), list(passages))  # as Ranker.predict: every pair once, unpadded
    tok_time["ours"] = time.perf_counter() - t0
    porder = np.argsort([-(len(q) + len(p)) for q, p in pairs])  # as CrossEncoder._inference
    t0 = time.perf_counter()
    for s in range(0, n, bs):
        type(peer).preprocess(peer, [pairs[i] for i in porder[s : s + bs]])
    tok_time["peer"] = time.perf_counter() - t0

    # agreement: all N pairs (undo the peer's Sigmoid with logit in float64) + a subset with the raw logits
    ours_scores = out["ours"].double().numpy()
    peer_out = np.asarray(out["peer"], dtype=np.float64)
    if settings["peer_activation_fn"] == "Sigmoid":
        with np.errstate(divide="ignore"):
            peer_scores = np.log(peer_out) - np.log1p(-peer_out)
        how = "peer output is Sigmoid(logit) (its default for 1-label models); undone with log p - log(1-p) in float64"
    else:
        peer_scores = peer_out
        how = "peer output compared as is"
    sub = min(n, args.agreement_subset)
    with torch.inference_mode(), _precision_ctx(args.precision, device):
        raw_peer = np.asarray(
            peer.predict(pairs[:sub], batch_size=bs, show_progress_bar=False, activation_fn=torch.nn.Identity()),
            dtype=np.float64,
        )
        raw_ours = ours.predict(queries[:sub], passages[:sub], batch_size=bs).double().numpy()
    finite = np.isfinite(peer_scores)
    diff = np.abs(ours_scores[finite] - peer_scores[finite])
    raw_diff = float(np.abs(raw_ours - raw_peer).max())
    tol = 1e-3 if args.precision == "fp32" else 5e-2
    agreement = {
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

    res = {
        "settings": settings,
        "params": {"total": total_params, "non_embedding": ne_params},
        "loadavg_before_after": [list(load_before), list(load_after)],
        "max_other_processes_cpu_share": max((x for v in others.values() for x in v if x is not None), default=None),
    }
    res["repeats_run"] = rep
    res["contention_threshold"] = quiet
    # contended: some row has no quiet run, so its best number is a busy-machine number
    res["contended"] = bool(contended_everywhere())
    impl = {}
    for name in args.impls:
        rates = [n / t for t in times[name]]
        impl[name] = {
            "pairs_per_s": _summary(rates),
            "seconds": times[name],
            "process_cpu_seconds": cpu_times[name],
            "pairs_per_cpu_s_best": max(n / t for t in cpu_times[name]),
            "other_processes_cpu_share": others[name],
            "pairs_per_s_best_quiet": max((r for r, o in zip(rates, others[name]) if o is not None and o <= quiet),
                                          default=None),
            "tokenize_only_seconds": tok_time[name],
            "tokenize_share_of_best_run": tok_time[name] / min(times[name]),
            **toks[name],
        }
        # FLOPs: 2 x non-embedding params x padded tokens actually processed by this path (attention L^2 excluded)
        flops_pair = 2.0 * ne_params * toks[name]["padded_tokens_per_pair"]
        impl[name]["flops_per_pair"] = flops_pair
        impl[name]["achieved_tflops_best"] = flops_pair * max(rates) / 1e12
        impl[name]["achieved_tflops_mean"] = flops_pair * statistics.fmean(rates) / 1e12
        if args.peak_tflops:
            impl[name]["mfu_best"] = impl[name]["achieved_tflops_best"] / args.peak_tflops
            impl[name]["mfu_mean"] = impl[name]["achieved_tflops_mean"] / args.peak_tflops
    res["implementations"] = impl
    res["speedup_ours_over_peer"] = {
        "best": impl["ours"]["pairs_per_s"]["best"] / impl["peer"]["pairs_per_s"]["best"],
        "mean": impl["ours"]["pairs_per_s"]["mean"] / impl["peer"]["pairs_per_s"]["mean"],
        "cpu_time_best": impl["ours"]["pairs_per_cpu_s_best"] / impl["peer"]["pairs_per_cpu_s_best"],
        "best_quiet": _ratio(impl["ours"]["pairs_per_s_best_quiet"], impl["peer"]["pairs_per_s_best_quiet"]),
    }
    res["agreement"] = agreement
    if args.peak_tflops:
        res["peak_tflops"] = args.peak_tflops
        res["mfu_note"] = (
            "FLOPs/pair = 2 x non-embedding params x mean padded tokens/pair (counted from each path's own tokenizer "
            "output); attention score/context FLOPs excluded; peak = --peak-tflops (dense)"
        )
    del ours, peer
    tmp.cleanup()
    return res


def _ratio(a, b):
    return a / b if a is not None and b else None


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


# ------------------------------------------------------------------------------------------------ part 2: parsing
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
        out[name] = {"lines_per_s": _summary([lines / t for t in times[name]]), "seconds": times[name]}
    out["speedup_ours_over_naive"] = out["ours"]["lines_per_s"]["best"] / out["naive"]["lines_per_s"]["best"]
    return out


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
    args.impls = ("ours", "peer")
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
        sp = report["scoring"]["speedup_ours_over_peer"]["best"]
        key = "gpu_speedup_min" if device.type == "cuda" else "cpu_speedup_min"
        checks["speedup"] = {"target": TARGETS[key], "measured_best": sp, "pass": bool(sp >= TARGETS[key])}
        checks["scores_agree"] = {"pass": report["scoring"]["agreement"]["agree"]}
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
        for name, label in (("ours", "ours (kd)"), ("peer", "CrossEncoder")):
            if name not in s["implementations"]:
                continue
            i = s["implementations"][name]
            print(f"{label:14s} {i['pairs_per_s']['best']:10.1f} {i['pairs_per_s']['mean']:10.1f} "
                  f"{i['padded_tokens_per_pair']:12.1f} {i['padding_efficiency']:8.3f} "
                  f"{i['tokenize_only_seconds']:7.2f} "
                  f"{i['achieved_tflops_best']:8.3f}" + (f" {i['mfu_best']:6.1%}" if mfu else ""))
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
