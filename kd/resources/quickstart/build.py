"""Build the quickstart's shipped data (this folder) from the full data sets, reproducibly.

    python kd/resources/quickstart/build.py --data ../shared/data        # from the repository root

Inputs (real, public; see ../shared/data/README.md): BEIR SciFact and the TREC DL 2019 passage track (43 judged
queries, official qrels, the official BM25 top-100 run and the text of its candidates). Outputs, all small:

    scifact/queries.jsonl            the selected claims (train / dev / test)
    scifact/corpus.jsonl.gz          every abstract the runs below or the qrels name (a subset of the 5,183)
    scifact/qrels/{train,dev,test}.tsv
                                     train: N_TRAIN claims of SciFact's train split; dev: N_DEV other train claims
                                     (held out for validation); test: N_TEST claims of SciFact's test split
    scifact/runs/bm25.{train,dev,test}.trec
                                     BM25 (kd.data.bm25, bm25s) over the FULL SciFact corpus: top K_TRAIN / K_DEV /
                                     K_TEST. Because every candidate is shipped, re-ranking these runs gives the same
                                     numbers as re-ranking them against the full corpus.
    dl19/queries.jsonl, dl19/qrels/test.tsv, dl19/runs/BM25.top100.trec
                                     TREC DL'19 as distributed (43 queries, 9,260 judgments, official BM25 top-100)
    dl19/corpus.jsonl.gz             the passages of that run (every candidate, nothing else)

Selections are seeded (--seed), files are written in a fixed order and gzip members carry no timestamp, so a rebuild
from the same inputs gives byte-identical files.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # run as a script from a source checkout: this checkout's kd

N_TRAIN, N_DEV, N_TEST = 400, 50, 100
K_TRAIN, K_DEV, K_TEST = 10, 20, 20


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_beir_qrels(path: Path, qrels: dict[str, dict[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in sorted(qrels, key=_id_key):
            for d in sorted(qrels[q], key=_id_key):
                f.write(f"{q}\t{d}\t{qrels[q][d]}\n")


def _id_key(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_scifact(src: Path, out: Path, seed: int) -> dict:
    from kd.data import bm25_search, read_qrels, write_trec_run

    corpus_rows = read_jsonl(src / "corpus.jsonl")
    corpus = {str(r["_id"]): {"title": r.get("title", ""), "text": r["text"]} for r in corpus_rows}
    queries = {str(r["_id"]): r["text"] for r in read_jsonl(src / "queries.jsonl")}
    train_qrels = read_qrels(src / "qrels" / "train.tsv")
    test_qrels = read_qrels(src / "qrels" / "test.tsv")

    rng = random.Random(seed)
    train_ids = sorted(train_qrels, key=_id_key)
    rng.shuffle(train_ids)
    dev_ids, train_ids = sorted(train_ids[:N_DEV], key=_id_key), sorted(train_ids[N_DEV:N_DEV + N_TRAIN], key=_id_key)
    test_ids = sorted(test_qrels, key=_id_key)
    rng.shuffle(test_ids)
    test_ids = sorted(test_ids[:N_TEST], key=_id_key)

    splits = {"train": (train_ids, train_qrels, K_TRAIN), "dev": (dev_ids, train_qrels, K_DEV),
              "test": (test_ids, test_qrels, K_TEST)}
    (out / "runs").mkdir(parents=True, exist_ok=True)
    keep_docs: set[str] = set()
    stats: dict = {}
    for split, (ids, qrels, k) in splits.items():
        run = bm25_search(corpus, {q: queries[q] for q in ids}, top_k=k, show_progress=False)
        write_trec_run(out / "runs" / f"bm25.{split}.trec", run, tag="bm25", k=k)
        sub = {q: {d: int(g) for d, g in qrels[q].items()} for q in ids}
        write_beir_qrels(out / "qrels" / f"{split}.tsv", sub)
        keep_docs |= {d for docs in run.values() for d in docs}
        keep_docs |= {d for docs in sub.values() for d in docs}
        stats[split] = {"queries": len(ids), "bm25_top_k": k, "judgments": sum(len(v) for v in sub.values())}
    selected = set(train_ids) | set(dev_ids) | set(test_ids)
    write_jsonl(out / "queries.jsonl", [{"_id": q, "text": queries[q]} for q in sorted(selected, key=_id_key)])
    kept = [{"_id": str(r["_id"]), "title": r.get("title", ""), "text": r["text"]}
            for r in corpus_rows if str(r["_id"]) in keep_docs]
    write_jsonl_gz(out / "corpus.jsonl.gz", kept)
    stats["corpus"] = {"documents": len(kept), "of": len(corpus)}
    return stats


def build_dl19(src: Path, out: Path) -> dict:
    from kd.data import read_trec_run

    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "queries.jsonl", out / "queries.jsonl")
    shutil.copyfile(src / "qrels" / "test.tsv", out / "qrels" / "test.tsv")
    shutil.copyfile(src / "runs" / "BM25.top100.trec", out / "runs" / "BM25.top100.trec")
    run = read_trec_run(src / "runs" / "BM25.top100.trec")
    needed = {d for docs in run.values() for d in docs}
    kept = [r for r in read_jsonl(src / "corpus.jsonl") if str(r["_id"]) in needed]
    missing = needed - {str(r["_id"]) for r in kept}
    if missing:
        raise SystemExit(f"{src / 'corpus.jsonl'} lacks {len(missing)} passages of the BM25 run")
    write_jsonl_gz(out / "corpus.jsonl.gz", kept)
    return {"queries": len(run), "passages": len(kept)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parents[2].parent / "shared" / "data"),
                    help="the full data folder (default: ../shared/data beside the repository)")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    stats = {"scifact": build_scifact(data / "beir" / "scifact", out / "scifact", args.seed),
             "dl19": build_dl19(data / "trec-dl-2019", out / "dl19"), "seed": args.seed}
    (out / "manifest.json").write_text(json.dumps(stats, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.suffix != ".py")
    print(json.dumps(stats, indent=2))
    print(f"shipped data: {total / 1e6:.2f} MB in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
