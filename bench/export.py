#!/usr/bin/env python3
"""CPU serving of an exported student: PyTorch fp32 vs its ONNX fp32 and int8 exports vs sentence-transformers' ONNX
backend, DL'19 BM25 top-100 re-ranking on the same machine, in the same run (issue 19).

    python bench/export.py --st-python ENV/bin/python   # 43 DL'19 queries x top-100 -> bench/results/export-cpu.json
    python bench/export.py --model path/to/bert_cat_student --queries 10
    python bench/export.py --queries 3 --repeats 1 --out /tmp/export.json      # a smoke run (~1 min)

The student: --model (a saved bert_cat folder, e.g. a trained one), else a 2-layer BERT_CAT of all-MiniLM-L6-v2's
layers 0 and 5 (top-bottom, as configs/students/bert_cat.yaml) with an untrained head — its speed is a trained
student's, its nDCG means nothing (the JSON says `untrained`). Rows, each scoring the same pairs:
  pytorch_fp32  Ranker.predict of the kd model (length-sorted batches, what kd.evaluation.rerank runs)
  onnx_fp32     the same model exported by `kd export --format onnx`, served by kd.load (onnxruntime)
  onnx_int8     `kd export --format onnx --quantize int8`
  st_onnx       sentence_transformers.CrossEncoder(<the same weights saved as an HF BertForSequenceClassification>,
                backend="onnx"): the backend's own export (optimum, fp32), in bench/_export_st.py run by
                --st-python (default: this Python). Its optimum-onnx pins transformers < 4.58 and kd needs >= 5, so
                it needs an environment of its own: `python -m venv --system-site-packages ENV && ENV/bin/pip
                install "sentence-transformers[onnx]<6"`; where it does not load, the row is absent, the JSON's
                `speedup_vs_st_onnx` is null and `st_onnx_unavailable` says why.
  st_onnx_int8  the same with the backend's own int8 (export_dynamic_quantized_onnx_model, avx512_vnni or avx2)
HF's head reads tanh(pooler(h_CLS)); the pooler is set to the identity, so the st rows' scores are tanh-squashed kd
scores: the same cost, but their nDCG is not kd's. All rows use --threads intra-op threads (torch.set_num_threads,
onnxruntime intra_op_num_threads; the st rows set theirs in their SessionOptions).

Timing: each row is warmed up on the first query; then, --repeats rounds, query by query, each row re-ranks the
query's 100 candidates once, the row order alternating from query to query. pairs/s = pairs / Σ_q (the query's
fastest call); `mean` uses the mean round. Each call records other processes' CPU share (_common.CpuWindow; the st
rows measure their call in their own process): numbers with other_share_median above 0.1 are busy-machine numbers
(`contended`). The JSON's headline, for the int8 export:
    speedup_vs_pytorch_fp32 = pairs/s(onnx_int8) / pairs/s(pytorch_fp32)
    speedup_vs_st_onnx      = pairs/s(onnx_int8) / pairs/s(st_onnx)
    ndcg_delta              = nDCG@10(onnx_int8) − nDCG@10(pytorch_fp32), over the queries run
and every row's ratios under `speedups` (vs_pytorch_fp32, vs_st_onnx, vs_st_onnx_int8), its nDCG delta under
`ndcg_deltas`.
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
ROWS = ("pytorch_fp32", "onnx_fp32", "onnx_int8", "st_onnx", "st_onnx_int8")
KD_ROWS = ROWS[:3]
RESULT_KEYS = ("created", "machine", "inputs", "model", "rows", "speedup_vs_pytorch_fp32", "speedup_vs_st_onnx",
               "st_onnx_unavailable", "ndcg_delta", "speedups", "ndcg_deltas", "ndcg_at_10", "pairs_per_s", "peer",
               "contended", "notes", "seconds")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a saved bert_cat folder (default: 2-layer MiniLM)")
    ap.add_argument("--queries", type=int, default=43, help="DL'19 queries (sorted ids) x their BM25 top-100")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads of every row (default: torch's)")
    ap.add_argument("--st-python", default=os.environ.get("KD_ST_PYTHON", sys.executable),
                    help="the Python of an environment with sentence-transformers[onnx] (default $KD_ST_PYTHON, else "
                         "this one)")
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
    """(eval-mode student, facts): the --model folder (bert_cat or bert_dot), or 2 of MiniLM's layers (0 and 5) as a
    BERT_CAT with a seeded head."""
    import torch

    from kd.init import layer_subset_student
    from kd.models import BertCat
    from kd.models.loader import load_ranker

    if path is not None:
        model = load_ranker(path)
        if model.architecture not in ("bert_cat", "bert_dot"):
            raise SystemExit(f"--model {path} holds a {model.architecture!r}; this bench compares bert_cat or "
                             "bert_dot rows (the peer is a sentence-transformers CrossEncoder / SentenceTransformer)")
        if model.architecture == "bert_dot" and model.options["projection_dim"]:
            raise SystemExit(f"--model {path}: a bert_dot with a projection has no plain sentence-transformers twin")
        from kd.teachers.checks import sha256_file

        weights = Path(path) / "model.safetensors"
        return model.eval(), {"source": str(path), "untrained": False,
                              "weights_sha256": sha256_file(weights) if weights.is_file() else None}
    torch.manual_seed(0)
    model = layer_subset_student(BertCat.from_backbone(None), "top-bottom", 2).eval()
    return model, {"source": "all-MiniLM-L6-v2 layers [0, 5] + a seeded untrained head", "untrained": True}


def st_folder(model, folder: Path) -> Path:
    """The student's weights as sentence-transformers loads them: bi_encoder_folder for a BERT_DOT, else (BERT_CAT)
    an HF BertForSequenceClassification (num_labels=1; pooler = identity) for a CrossEncoder."""
    if model.architecture == "bert_dot":
        return bi_encoder_folder(model, folder)
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


def bi_encoder_folder(model, folder: Path) -> Path:
    """A kd BERT_DOT as a SentenceTransformer folder: its encoder, Pooling (its cls / mean), Normalize when it
    normalises; max_seq_length = its passage length (queries are shorter than both of its limits here)."""
    model.encoder.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    pooling, hidden = model.options["pooling"], int(model.embedding_dim)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if model.options["normalize"]:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": model.options["max_passage_length"], "do_lower_case": False}))
    return folder


class StWorker:
    """A peer row: bench/_export_st.py in `python` (its own process and environment), scoring on request; `last` is
    the call's own window as the worker measured it ({seconds, other_share}), so the pipe is not timed."""

    def __init__(self, python: str, folder: Path, variant: str, model, threads: int, log: Path):
        import subprocess

        self.log = log
        kind = "bi" if model.architecture == "bert_dot" else "cross"
        length = model.options["max_passage_length"] if kind == "bi" else model._max_length()
        cmd = [python, str(Path(__file__).with_name("_export_st.py")), str(folder), "--variant", variant,
               "--kind", kind, "--max-length", str(length), "--threads", str(threads)]
        env = {**os.environ, "PYTHONPATH": ""}  # the worker's environment, not kd's checkout
        with open(log, "w") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         env=env)
        first = json.loads(self.proc.stdout.readline() or '{"error": "the worker exited"}')
        self.error = first.get("error")
        if self.error:
            self.error += f" (log tail: {log.read_text()[-300:].strip()!r})" if "exited" in self.error else ""
            self.close()
        self.versions, self.file, self.bytes = first.get("versions"), first.get("file"), first.get("bytes")
        self.last = {}

    def __call__(self, qs, ps, bs):
        self.proc.stdin.write(json.dumps({"queries": list(qs), "passages": list(ps), "batch_size": bs}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        self.last = {"seconds": reply["seconds"], "other_share": reply["other_share"]}
        return np.asarray(reply["scores"])

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def st_rows(model, folder: Path, python: str, threads: int) -> tuple[dict, dict]:
    """({row: StWorker} for sentence-transformers' ONNX backend, fp32 and its own int8, {row: why not})."""
    st_folder(model, folder)
    workers, missing = {}, {}
    for row, variant in (("st_onnx", "onnx"), ("st_onnx_int8", "onnx-int8")):
        w = StWorker(python, folder, variant, model, threads, folder.parent / f"{row}.log")
        if w.error:
            missing[row] = (f"sentence-transformers' ONNX backend did not load in {python}: {w.error}; it needs "
                            "sentence-transformers[onnx] (optimum-onnx, which pins transformers < 4.58: another "
                            "environment than kd's, e.g. pip install 'sentence-transformers[onnx]<6', given as "
                            "--st-python)")
        else:
            workers[row] = w
    return workers, missing


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
                own = getattr(scorers[name], "last", None) or {"seconds": w.seconds, "other_share": w.other_share}
                calls[name].append({"qid": qid, "round": rnd, **own})
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


def measure(args, model, threads: int, cands, queries, passages) -> dict:
    """Export the student (fp32, int8), start the peers, time every row: {calls, runs, sizes, export_seconds, missing,
    peer}."""
    import torch

    from kd.export import export_onnx, load_onnx_ranker

    with tempfile.TemporaryDirectory(prefix="kd-bench-export-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        fp32 = load_onnx_ranker(export_onnx(model, tmp / "fp32"), threads=threads)
        int8 = load_onnx_ranker(export_onnx(model, tmp / "int8", quantize="int8"), threads=threads)
        export_seconds = time.perf_counter() - t0
        scorers = {"pytorch_fp32": lambda q, p, b: model.predict(q, p, batch_size=b).numpy(),
                   "onnx_fp32": lambda q, p, b: fp32.predict(q, p, batch_size=b).numpy(),
                   "onnx_int8": lambda q, p, b: int8.predict(q, p, batch_size=b).numpy()}
        workers, missing = st_rows(model, tmp / "st", args.st_python, threads)
        scorers.update(workers)
        sizes = {"onnx_fp32": (tmp / "fp32" / "model.onnx").stat().st_size,
                 "onnx_int8": (tmp / "int8" / "model.onnx").stat().st_size}
        sizes.update({r: w.bytes for r, w in workers.items()})
        try:
            with torch.inference_mode():
                calls, runs = time_rows(scorers, cands, queries, passages, args)
        finally:
            for w in workers.values():
                w.close()
        peer = {r: {"python": args.st_python, "file": w.file, "versions": w.versions} for r, w in workers.items()}
    return {"calls": calls, "runs": runs, "sizes": sizes, "export_seconds": export_seconds, "missing": missing,
            "peer": peer, "rows": list(scorers)}


def headline(pps: dict, ndcg: dict) -> dict:
    """The int8 export against PyTorch fp32 and sentence-transformers' ONNX backend, and every row's ratios."""
    def ratio(a, b):
        return a / b if a and b else None

    return {
        "speedup_vs_pytorch_fp32": ratio(pps["onnx_int8"], pps["pytorch_fp32"]),
        "speedup_vs_st_onnx": ratio(pps["onnx_int8"], pps["st_onnx"]),
        "ndcg_delta": ndcg["onnx_int8"] - ndcg["pytorch_fp32"],
        "speedups": {f"vs_{base}": {n: ratio(v, pps[base]) for n, v in pps.items()}
                     for base in ("pytorch_fp32", "st_onnx", "st_onnx_int8")},
        "ndcg_deltas": {n: ndcg[n] - ndcg["pytorch_fp32"] for n in KD_ROWS},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from kd.metrics import evaluate

    quiet_hf()
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    host = machine("cpu", packages=("onnxruntime", "onnx", "transformers"))
    cands, queries, passages, qrels = dl19(args.queries)
    model, facts = student(args.model)
    m = measure(args, model, threads, cands, queries, passages)
    notes = [f"{r} not run: {why}" for r, why in m["missing"].items()]
    if model.architecture == "bert_cat":
        notes.append("st rows: HF's tanh(pooler) head over the kd head, so their nDCG is not kd's")
    pairs = sum(map(len, cands.values()))
    rows = {name: summarise(m["calls"][name], pairs) for name in m["rows"]}
    judged = {q: qrels[q] for q in cands if q in qrels}
    ndcg = {name: float(evaluate(m["runs"][name], judged, ["ndcg@10"], relevance_level=2,
                                 missing="skip")["ndcg@10"]) for name in m["rows"]}
    for name, row in rows.items():
        row.update(ndcg_at_10=ndcg[name], model_bytes=m["sizes"].get(name))
    pps = {name: rows[name]["pairs_per_s_best"] if name in rows else None for name in ROWS}
    result = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": host,
        "inputs": {"queries": args.queries, "depth": DEPTH, "pairs": pairs, "batch_size": args.batch_size,
                   "repeats": args.repeats, "threads": threads, "run": "kd/resources/quickstart/dl19 BM25.top100"},
        "model": {**facts, "architecture": model.architecture, "options": model.options,
                  "parameters": int(model.num_parameters()), "export_seconds": m["export_seconds"]},
        **headline(pps, ndcg), "st_onnx_unavailable": m["missing"].get("st_onnx"),
        "rows": rows, "pairs_per_s": pps, "ndcg_at_10": ndcg, "peer": m["peer"],
        "contended": any((r["other_share_median"] or 0) > 0.1 for r in rows.values()),
        "notes": notes + (["untrained head: nDCG values mean nothing, their deltas only measure score drift"]
           if facts["untrained"] else []),
        "seconds": {"total": time.perf_counter() - started},
    }
    result = {k: result[k] for k in RESULT_KEYS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'row':<13} {'pairs/s':>9} {'x pytorch':>9} {'nDCG@10':>8}")
    for name in m["rows"]:
        print(f"{name:<13} {pps[name]:>9.1f} {result['speedups']['vs_pytorch_fp32'][name]:>9.2f} {ndcg[name]:>8.4f}")
    st = result["speedup_vs_st_onnx"]
    print(f"wrote {args.out} (contended={result['contended']}; int8: {result['speedup_vs_pytorch_fp32']:.2f}x "
          f"PyTorch, {f'{st:.2f}x' if st else 'n/a'} st_onnx, ndcg_delta {result['ndcg_delta']:+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
