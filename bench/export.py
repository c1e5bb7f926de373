#!/usr/bin/env python3
"""CPU serving of an exported student: PyTorch fp32 vs its ONNX fp32 and int8 exports vs sentence-transformers' ONNX
backend, DL'19 BM25 top-100 re-ranking on the same machine, in the same run (issue 19).

    python bench/export.py                          # 43 DL'19 queries x top-100 -> bench/results/export-cpu.json
    python bench/export.py --model path/to/bert_cat_student --queries 10
    python bench/export.py --queries 3 --repeats 1 --out /tmp/export.json      # a smoke run (~1 min)

The student: --model (a saved bert_cat folder, e.g. a trained one), else a 2-layer BERT_CAT of all-MiniLM-L6-v2's
layers 0 and 5 (top-bottom, as configs/students/bert_cat.yaml) with an untrained head — its speed is a trained
student's, its nDCG means nothing (the JSON says `untrained`). Rows, each scoring the same pairs:
  pytorch_fp32  Ranker.predict of the kd model (length-sorted batches, what kd.evaluation.rerank runs)
  onnx_fp32     the same model exported by `kd export --format onnx`, served by kd.load (onnxruntime)
  onnx_int8     `kd export --format onnx --quantize int8`
  st_onnx       sentence_transformers.CrossEncoder(<the same weights saved as an HF BertForSequenceClassification>,
                backend="onnx"), which exports through optimum: needs optimum + optimum-onnx, which today resolve
                to transformers 4.57 beside kd's >= 5 (absent → the row says so, speedup_vs_st_onnx is null). HF's head reads tanh(pooler(h_CLS)); the pooler is
                set to the identity, so its scores are tanh-squashed kd scores: same speed, nDCG not comparable.
All rows use --threads intra-op threads (torch.set_num_threads, onnxruntime intra_op_num_threads).

Timing: each row is warmed up on the first query; then, --repeats rounds, query by query, each row re-ranks the
query's 100 candidates once, the row order alternating from query to query. pairs/s = pairs / Σ_q (the query's
fastest call); `mean` uses the mean round. Each call records other processes' CPU share (_common.CpuWindow):
numbers with other_share_median above 0.1 are busy-machine numbers (`contended`).
    speedup_vs_pytorch_fp32 = pairs/s(row) / pairs/s(pytorch_fp32)    speedup_vs_st_onnx = … / pairs/s(st_onnx)
    ndcg_delta = nDCG@10(onnx_int8) − nDCG@10(pytorch_fp32) (also for onnx_fp32, which should be 0)
"""
from __future__ import annotations

import argparse
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
from _common import ROOT, CpuWindow, machine, quiet_hf  # noqa: E402

sys.path.insert(0, str(ROOT))

DL19 = ROOT / "kd" / "resources" / "quickstart" / "dl19"
DEPTH = 100
ROWS = ("pytorch_fp32", "onnx_fp32", "onnx_int8", "st_onnx")
RESULT_KEYS = ("created", "machine", "inputs", "model", "rows", "speedup_vs_pytorch_fp32", "speedup_vs_st_onnx",
               "ndcg_delta", "ndcg_at_10", "pairs_per_s", "contended", "notes", "seconds")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a saved bert_cat folder (default: 2-layer MiniLM)")
    ap.add_argument("--queries", type=int, default=43, help="DL'19 queries (sorted ids) x their BM25 top-100")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads of every row (default: torch's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "export-cpu.json")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.queries < 1:
        ap.error("need --repeats >= 1 and --queries >= 1")
    return args


def dl19(n_queries: int):
    """(candidates {qid: [docid x 100]}, queries, passages, qrels) of the first n DL'19 queries (sorted ids)."""
    from kd.data import load_passages, load_queries, read_qrels, read_trec_run
    from kd.evaluation import top_candidates

    run = read_trec_run(DL19 / "runs" / "BM25.top100.trec")
    queries = load_queries(DL19 / "queries.jsonl")
    qids = sorted(q for q in run if q in queries)
    if n_queries > len(qids):
        raise SystemExit(f"--queries must be at most {len(qids)}, got {n_queries}")
    cands = top_candidates(run, qids[:n_queries], DEPTH)
    return (cands, queries, load_passages(DL19 / "corpus.jsonl.gz", show_progress=False),
            read_qrels(DL19 / "qrels" / "test.tsv"))


def student(path: Path | None):
    """(eval-mode BERT_CAT, facts): the --model folder, or 2 of MiniLM's layers (0 and 5) with a seeded head."""
    import torch

    from kd.init import layer_subset_student
    from kd.models import BertCat
    from kd.models.loader import load_ranker

    if path is not None:
        model = load_ranker(path)
        if model.architecture != "bert_cat":
            raise SystemExit(f"--model {path} holds a {model.architecture!r}; this bench compares bert_cat rows")
        return model.eval(), {"source": str(path), "untrained": False}
    torch.manual_seed(0)
    model = layer_subset_student(BertCat.from_backbone(None), "top-bottom", 2).eval()
    return model, {"source": "all-MiniLM-L6-v2 layers [0, 5] + a seeded untrained head", "untrained": True}


def st_folder(model, folder: Path) -> Path:
    """The kd BERT_CAT's weights as an HF BertForSequenceClassification (num_labels=1; pooler = identity)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(**{**model.encoder.config.to_dict(), "num_labels": 1})
    hf = BertForSequenceClassification(config).eval()
    state = {f"bert.{k}": v for k, v in model.encoder.state_dict().items()}
    hidden = config.hidden_size
    state.update({"bert.pooler.dense.weight": torch.eye(hidden), "bert.pooler.dense.bias": torch.zeros(hidden),
                  "classifier.weight": model.classifier.weight.detach(), "classifier.bias": model.classifier.bias})
    hf.load_state_dict(state, strict=True)
    hf.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def st_onnx_row(model, folder: Path, threads: int):
    """(scorer, None) for sentence-transformers' ONNX backend, or (None, why it is missing)."""
    try:
        import optimum.onnxruntime  # noqa: F401
        from sentence_transformers import CrossEncoder
    except ImportError as e:
        return None, (f"sentence-transformers' ONNX backend needs optimum + optimum-onnx ({e}); pip resolves "
                      "optimum 2.x + optimum-onnx 0.1.0 to transformers 4.57, and kd needs transformers >= 5")
    import torch

    ce = CrossEncoder(str(st_folder(model, folder)), backend="onnx", max_length=model._max_length(),
                      model_kwargs={"provider": "CPUExecutionProvider"})
    identity = torch.nn.Identity()  # raw logits, as kd's rows return

    def score(qs, ps, bs):
        return np.asarray(ce.predict(list(zip(qs, ps)), batch_size=bs, show_progress_bar=False,
                                     activation_fn=identity))

    return score, None


def time_rows(scorers: dict, cands, queries, passages, args) -> tuple[dict, dict]:
    """({row: [{qid, round, seconds, other_share}]}, {row: {qid: {docid: score}}}) after a warm-up query."""
    calls = {r: [] for r in scorers}
    runs = {r: {} for r in scorers}
    first = next(iter(cands))
    for fn in scorers.values():  # warm-up
        fn([queries[first]] * len(cands[first]), [passages[d] for d in cands[first]], args.batch_size)
    for rnd in range(args.repeats):
        for i, (qid, docs) in enumerate(cands.items()):
            order = list(scorers) if (i + rnd) % 2 == 0 else list(scorers)[::-1]
            qs, ps = [queries[qid]] * len(docs), [passages[d] for d in docs]
            for name in order:
                with CpuWindow() as w:
                    scores = np.asarray(scorers[name](qs, ps, args.batch_size), dtype=np.float64).reshape(-1)
                calls[name].append({"qid": qid, "round": rnd, "seconds": w.seconds, "other_share": w.other_share})
                runs[name][qid] = dict(zip(docs, map(float, scores)))
    return calls, runs


def summarise(calls: list[dict], pairs: int) -> dict:
    by_q: dict[str, list[float]] = {}
    for c in calls:
        by_q.setdefault(c["qid"], []).append(c["seconds"])
    rounds = sorted({c["round"] for c in calls})
    per_round = [sum(c["seconds"] for c in calls if c["round"] == r) for r in rounds]
    shares = [c["other_share"] for c in calls if c["other_share"] is not None]
    return {"pairs_per_s_best": pairs / sum(min(v) for v in by_q.values()),
            "pairs_per_s_mean": pairs / float(np.mean(per_round)), "calls": len(calls),
            "other_share_median": float(np.median(shares)) if shares else None}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from kd.export import export_onnx, load_onnx_ranker
    from kd.metrics import evaluate

    quiet_hf()
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    host = machine("cpu", packages=("onnxruntime", "onnx", "transformers"))
    cands, queries, passages, qrels = dl19(args.queries)
    model, facts = student(args.model)
    notes = []
    with tempfile.TemporaryDirectory(prefix="kd-bench-export-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        fp32 = load_onnx_ranker(export_onnx(model, tmp / "fp32"), threads=threads)
        int8 = load_onnx_ranker(export_onnx(model, tmp / "int8", quantize="int8"), threads=threads)
        export_seconds = time.perf_counter() - t0
        scorers = {"pytorch_fp32": lambda q, p, b: model.predict(q, p, batch_size=b).numpy(),
                   "onnx_fp32": lambda q, p, b: fp32.predict(q, p, batch_size=b).numpy(),
                   "onnx_int8": lambda q, p, b: int8.predict(q, p, batch_size=b).numpy()}
        st, missing = st_onnx_row(model, tmp / "st", threads)
        if st is not None:
            scorers["st_onnx"] = st
        else:
            notes.append(f"st_onnx not run: {missing}")
            print(f"note: st_onnx row skipped — {missing}", file=sys.stderr)
        sizes = {"onnx_fp32": (tmp / "fp32" / "model.onnx").stat().st_size,
                 "onnx_int8": (tmp / "int8" / "model.onnx").stat().st_size}
        with torch.inference_mode():
            calls, runs = time_rows(scorers, cands, queries, passages, args)
    pairs = sum(map(len, cands.values()))
    rows = {name: summarise(calls[name], pairs) for name in scorers}
    judged = {q: qrels[q] for q in cands if q in qrels}
    ndcg = {name: float(evaluate(runs[name], judged, ["ndcg@10"], relevance_level=2, missing="skip")["ndcg@10"]) for name in scorers}
    for name, row in rows.items():
        row.update(ndcg_at_10=ndcg[name], model_bytes=sizes.get(name))
    pps = {name: rows[name]["pairs_per_s_best"] if name in rows else None for name in ROWS}
    base, st_pps = pps["pytorch_fp32"], pps["st_onnx"]
    result = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": host,
        "inputs": {"queries": args.queries, "depth": DEPTH, "pairs": pairs, "batch_size": args.batch_size,
                   "repeats": args.repeats, "threads": threads, "run": "kd/resources/quickstart/dl19 BM25.top100"},
        "model": {**facts, "architecture": model.architecture, "options": model.options,
                  "parameters": int(model.num_parameters()), "export_seconds": export_seconds},
        "rows": rows, "pairs_per_s": pps,
        "speedup_vs_pytorch_fp32": {n: (v / base if v else None) for n, v in pps.items()},
        "speedup_vs_st_onnx": {n: (v / st_pps if v and st_pps else None) for n, v in pps.items()},
        "ndcg_at_10": ndcg,
        "ndcg_delta": {"onnx_int8": ndcg["onnx_int8"] - ndcg["pytorch_fp32"],
                       "onnx_fp32": ndcg["onnx_fp32"] - ndcg["pytorch_fp32"]},
        "contended": any((r["other_share_median"] or 0) > 0.1 for r in rows.values()),
        "notes": notes + (["untrained head: nDCG values mean nothing, their deltas only measure score drift"]
                          if facts["untrained"] else []),
        "seconds": {"total": time.perf_counter() - started},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'row':<13} {'pairs/s':>9} {'x pytorch':>9} {'nDCG@10':>8}")
    for name in scorers:
        print(f"{name:<13} {pps[name]:>9.1f} {result['speedup_vs_pytorch_fp32'][name]:>9.2f} {ndcg[name]:>8.4f}")
    print(f"wrote {args.out} (contended={result['contended']}, ndcg_delta int8={result['ndcg_delta']['onnx_int8']:+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
