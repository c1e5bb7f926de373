"""The `kd` command: use a ranker found by registry URI, folder or name.

    kd rerank --model models:/scifact-bert-dot@champion --query "what causes fever" --passages passages.tsv
    kd rerank --model models:/scifact-bert-dot@champion --run bm25.trec --queries queries.jsonl \\
              --corpus corpus.jsonl --top-k 100 --output reranked.trec
    kd encode --model models:/scifact-bert-dot@champion --input corpus.jsonl --kind docs --out docs.npy
    kd lookup --model models:/scifact-bert-dot@champion
    kd export --model models:/scifact-bert-dot@champion --format onnx --quantize int8 --out served/bert-dot-int8
    kd teachers combine --members out/members.parquet --combine zscore --weight bm25=0.5 --out out/recombined

`--model` takes models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/model, a saved kd folder, or an HF /
sentence-transformers name or folder; registry URIs use --tracking-uri, else $MLFLOW_TRACKING_URI.
`teachers combine` recombines a scoring run's raw member scores (jobs.score_teachers' members.parquet) without
rescoring: DIR/teacher_scores.tsv + DIR/ensemble/.
`export` writes an ONNX folder (graph, tokenizer, kd_onnx.json) that --model accepts like any kd folder (kd/export/);
with --register it is also attached to the registered version --model names (kd.load(URI, format="onnx")).
Exit codes: 0 ok, 2 bad input (missing file, unknown model / alias / version, wrong model kind).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TEXT_FORMATS = "a .jsonl file (BEIR queries.jsonl / corpus.jsonl: _id, [title,] text), an id<TAB>text TSV, or " \
               "plain text (one per line; ids are line numbers from 1)"


def _read_texts(path: str, *, use_title: bool = True) -> tuple[list[str], list[str]]:
    """(ids, texts) from a jsonl / TSV / plain-text file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    if path.endswith((".jsonl", ".jsonl.gz")):
        from kd.data import load_passages

        texts = load_passages(path, use_title=use_title, show_progress=False)
        return list(texts.keys()), list(texts.values())
    ids, out = [], []
    with open(p, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the first id/text
        lines = [line.rstrip("\n") for line in f if line.strip()]
    tsv = bool(lines) and all("\t" in line for line in lines)
    for n, line in enumerate(lines, 1):
        if tsv:
            i, t = line.split("\t", 1)
            ids.append(i.strip())
            out.append(t)
        else:
            ids.append(str(n))
            out.append(line)
    return ids, out


def _load(args):
    import kd

    return kd.load(args.model, tracking_uri=args.tracking_uri, device=args.device)


def cmd_rerank(args) -> int:
    ranker = _load(args)
    if args.run:
        from kd.data import load_passages, load_queries, ranked, read_trec_run, write_trec_run

        if not (args.queries and args.corpus):
            raise UsageError("--run needs --queries and --corpus (the texts of its query and document ids)")
        run = read_trec_run(args.run)
        queries = load_queries(args.queries)
        corpus = load_passages(args.corpus, show_progress=False, use_title=not args.no_title)
        qids = sorted(run)
        if args.query_id:
            missing = [q for q in args.query_id if q not in run]
            if missing:
                raise UsageError(f"query ids {missing} are not in {args.run}")
            qids = [q for q in qids if q in set(args.query_id)]
        out: dict[str, dict[str, float]] = {}
        for qid in qids:
            if qid not in queries:
                raise UsageError(f"query {qid!r} of {args.run} has no text in {args.queries}")
            docs = [d for d, _ in ranked(run[qid], args.top_k)]
            missing = [d for d in docs if d not in corpus]
            if missing:
                raise UsageError(f"{len(missing)} documents of query {qid!r} have no text in {args.corpus}, "
                                 f"e.g. {missing[:3]}")
            scores = ranker.rerank(queries[qid], [corpus[d] for d in docs], batch_size=args.batch_size)
            out[qid] = dict(zip(docs, map(float, scores)))
        if args.output:
            n = write_trec_run(args.output, out, tag=args.tag)
            print(f"wrote {n} lines for {len(out)} queries to {args.output}", file=sys.stderr)
        else:
            for qid in sorted(out):
                for rank, (docid, score) in enumerate(ranked(out[qid]), 1):
                    print(f"{qid} Q0 {docid} {rank} {score!r} {args.tag}")
        return 0
    if args.query is None:
        raise UsageError("give --query TEXT with --passages FILE / --passage TEXT, or --run FILE (+ --queries, "
                         "--corpus) to re-rank a TREC run")
    ids, texts = [], []
    if args.passages:
        ids, texts = _read_texts(args.passages, use_title=not args.no_title)
    for n, p in enumerate(args.passage or [], len(ids) + 1):
        ids.append(str(n))
        texts.append(p)
    if not texts:
        raise UsageError("no passages: give --passages FILE and/or --passage TEXT")
    ranking = ranker.rank(args.query, texts, top_k=args.top_k, batch_size=args.batch_size)
    if args.json:
        print(json.dumps([{"rank": r, "id": ids[i], "score": s, "text": texts[i]}
                          for r, (i, s) in enumerate(ranking, 1)], indent=1))
    else:
        for r, (i, s) in enumerate(ranking, 1):
            text = texts[i] if len(texts[i]) <= 100 else texts[i][:97] + "..."
            print(f"{r}\t{ids[i]}\t{s:.6f}\t{text}")
    return 0


def cmd_encode(args) -> int:
    import numpy as np

    ranker = _load(args)
    ids, texts = _read_texts(args.input, use_title=not args.no_title)
    if not texts:
        raise UsageError(f"{args.input}: no texts")
    fn = ranker.encode_queries if args.kind == "queries" else ranker.encode_docs
    emb = fn(texts, batch_size=args.batch_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(emb, list):  # ColBERT: one [tokens, dim] matrix per text → concatenated + offsets
        offsets = np.cumsum([0] + [e.shape[0] for e in emb]).astype(np.int64)
        if out.suffix != ".npz":
            out = out.with_suffix(".npz")
        np.savez(out, vectors=np.concatenate(emb).astype(np.float32), offsets=offsets, ids=np.array(ids))
        shape = f"{len(emb)} texts, {int(offsets[-1])} token vectors of dim {emb[0].shape[1]}"
    else:
        np.save(out, emb)
        Path(str(out) + ".ids").write_text("".join(f"{i}\n" for i in ids))
        shape = f"{emb.shape[0]} × {emb.shape[1]}"
    print(f"wrote {shape} ({ranker.architecture}, {args.kind}) to {out}", file=sys.stderr)
    return 0


def cmd_lookup(args) -> int:
    from kd.registry import resolve

    if args.load:
        print(json.dumps(_load(args).info(), indent=2, default=str))
    else:
        print(json.dumps(resolve(args.model, args.tracking_uri).to_dict(), indent=2, default=str))
    return 0


def cmd_teachers_combine(args) -> int:
    from kd.teachers.scores import recombine

    weights = {}
    for item in args.weight or []:
        name, sep, value = item.partition("=")
        try:
            weight = float(value) if sep and name else None
        except ValueError:
            weight = None
        if weight is None:
            raise UsageError(f"--weight {item!r}: give NAME=WEIGHT, e.g. bm25=0.5")
        weights[name] = weight
    try:
        combination, paths = recombine(args.members, args.out, args.combine, weights)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"{combination.describe()} → {paths['scores']} and {paths['ensemble']}", file=sys.stderr)
    return 0


def _export_source(args) -> tuple[object, Path]:
    """(ModelRef, local folder) of --model, refused before any weights load when it cannot be exported."""
    from kd.eval_models import ENSEMBLE_FILE, KD_CONFIG_FILE, saved_architecture
    from kd.export import ExportError, export_problem, is_export_folder
    from kd.registry import fetch, resolve

    ref = resolve(args.model, args.tracking_uri)
    folder = Path(fetch(ref))
    if ref.kind == "hub":
        return ref, folder  # an HF / sentence-transformers name: loaded as a bert_dot, or the loader says why not
    if is_export_folder(folder):
        raise ExportError(f"{args.model} is already an ONNX export (kd_onnx.json); export its source model instead")
    if not folder.is_dir() or not any((folder / f).is_file() for f in (KD_CONFIG_FILE, ENSEMBLE_FILE, "config.json")):
        raise ExportError(f"{args.model} is not a kd model folder: it has no {KD_CONFIG_FILE} (nor an HF "
                          "config.json)")
    arch = saved_architecture(folder)
    problem = export_problem(arch) if arch is not None else None
    if problem:
        raise ExportError(f"{args.model}: {problem}")
    return ref, folder


def cmd_export(args) -> int:
    from kd.export import ExportError, check_out_dir, export_onnx, read_manifest
    from kd.export.support import check_request

    check_request(args.format, args.quantize)
    check_out_dir(args.out, args.overwrite)
    ref, folder = _export_source(args)
    if args.register and ref.kind != "registered":
        raise ExportError(f"--register attaches the export to a registered version; --model {args.model} is a "
                          f"{ref.kind} model (give models:/<name>@<alias> or models:/<name>/<version>)")
    from kd.export.manifest import sha256
    from kd.models.loader import load_ranker

    model = load_ranker(str(folder)).to("cpu")
    source = {"model": args.model, "ref": ref.to_dict(), "folder": str(folder)}
    for name in ("kd_config.json", "model.safetensors"):
        if (folder / name).is_file():
            source[f"{name}_sha256"] = sha256(folder / name)
    out = export_onnx(model, args.out, quantize=args.quantize, per_channel=not args.per_tensor,
                      overwrite=args.overwrite, source=source, exporter=args.exporter)
    manifest = read_manifest(out, verify=False)
    graph = manifest["graphs"]["model"]
    print(f"exported {model.architecture} ({args.quantize or 'fp32'}, opset {manifest['opset']}, "
          f"{graph['bytes'] / 2**20:.1f} MiB) to {out}; sample scores within "
          f"{manifest['check']['max_abs_diff_vs_pytorch']:.2g} of PyTorch", file=sys.stderr)
    if args.register:
        from kd.runtime.registry import attach_export, export_tag

        where = attach_export(args.model, out, tracking_uri=args.tracking_uri)
        print(f"attached to {ref.version_uri} as {where} (version tag {export_tag(args.quantize)}); load it with "
              f"kd.load({args.model!r}, format='onnx'{', quantize=' + repr(args.quantize) if args.quantize else ''})",
              file=sys.stderr)
    return 0


class UsageError(ValueError):
    pass


def add_export_parser(sub) -> None:
    """`kd export`: its own function, so build_parser stays one screen."""
    ex = sub.add_parser("export", help="export a student to ONNX for CPU serving (fp32 or int8)",
                        description="Export a student (bert_cat, bert_dot, colbert, tinybert_cat) to an ONNX folder: "
                                    "the graph, its tokenizer and kd_onnx.json (architecture, options, source, opset, "
                                    "quantization, sha256). --model accepts the folder like any kd model "
                                    "(onnxruntime, CPU). PreTTR and TK are not exported (the error says why).",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ex.add_argument("--model", required=True, metavar="URI",
                    help="models:/<name>@<alias> | models:/<name>/<version> | runs:/<id>/model | kd folder")
    ex.add_argument("--tracking-uri", default=None, help="MLflow tracking server (default $MLFLOW_TRACKING_URI)")
    ex.add_argument("--format", default="onnx", choices=("onnx",))
    ex.add_argument("--quantize", default=None, choices=("int8",),
                    help="int8: dynamic quantization of the Linear weights (default: fp32)")
    ex.add_argument("--per-tensor", action="store_true", help="int8 with one scale per weight matrix instead of "
                                                               "one per output channel")
    ex.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"),
                    help="torch.onnx.export's exporter (dynamo needs onnxscript)")
    ex.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must be empty or absent)")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ex.add_argument("--register", action="store_true",
                    help="also attach the export to the registered version --model names (run artifacts + version "
                         "tag kd.onnx[.int8]); kd.load(URI, format='onnx'[, quantize='int8']) then serves it")
    ex.set_defaults(fn=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{rerank,encode,lookup,export,teachers}")

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, metavar="URI",
                       help="models:/<name>@<alias> | models:/<name>/<version> | runs:/<id>/model | kd folder | "
                            "HF / sentence-transformers name or folder")
        p.add_argument("--tracking-uri", default=None, help="MLflow tracking server (default $MLFLOW_TRACKING_URI)")
        p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")

    r = sub.add_parser("rerank", help="score passages for a query, or re-rank a TREC run",
                       description="Score passages for one query (printed best first: rank, id, score, text), or "
                                   "re-rank the top-k of every query of a TREC run (written as a TREC run).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model_args(r)
    r.add_argument("--query", help="the query text (with --passages / --passage)")
    r.add_argument("--passages", metavar="FILE", help=f"candidate passages: {TEXT_FORMATS}")
    r.add_argument("--passage", action="append", metavar="TEXT", help="a candidate passage (repeatable)")
    r.add_argument("--run", metavar="FILE", help="a TREC run (qid Q0 docid rank score tag) to re-rank")
    r.add_argument("--queries", metavar="FILE", help="with --run: queries.jsonl or id<TAB>text TSV")
    r.add_argument("--corpus", metavar="FILE", help="with --run: corpus.jsonl or id<TAB>text TSV")
    r.add_argument("--query-id", action="append", metavar="QID", help="with --run: only these queries (repeatable)")
    r.add_argument("--top-k", type=int, default=None, help="re-rank / print only the first k (default all)")
    r.add_argument("--output", metavar="FILE", help="with --run: write the TREC run here (default stdout)")
    r.add_argument("--tag", default="kd", help="run tag of the TREC output")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--no-title", action="store_true", help="corpus.jsonl: passage text without the title")
    r.add_argument("--json", action="store_true", help="--query mode: print JSON instead of TSV")
    r.set_defaults(fn=cmd_rerank)

    e = sub.add_parser("encode", help="embed queries or documents with a dual encoder (bert_dot, colbert)",
                       description="Encode texts with a dual encoder. bert_dot: a float32 [n, d] .npy (+ <out>.ids, "
                                   "one id per line); colbert: an .npz with vectors [tokens, d], offsets [n+1], ids.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model_args(e)
    e.add_argument("--input", required=True, metavar="FILE", help=f"texts: {TEXT_FORMATS}")
    e.add_argument("--kind", required=True, choices=("queries", "docs"))
    e.add_argument("--out", required=True, metavar="FILE", help="output .npy (bert_dot) / .npz (colbert)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--no-title", action="store_true", help="corpus.jsonl: text without the title")
    e.set_defaults(fn=cmd_encode)

    lk = sub.add_parser("lookup", help="resolve a model URI: registered name, version, aliases, run, tags",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model_args(lk)
    lk.add_argument("--load", action="store_true", help="also download and load it (adds architecture, size)")
    lk.set_defaults(fn=cmd_lookup)

    add_export_parser(sub)

    tc = sub.add_parser("teachers", help="teacher ensembles: recombine scored members without rescoring")
    tsub = tc.add_subparsers(dest="teachers_command", required=True, metavar="{combine}")
    cb = tsub.add_parser("combine", help="combine members.parquet anew → DIR/teacher_scores.tsv + DIR/ensemble/",
                         description="Combine the raw member scores a scoring run kept (jobs.score_teachers' "
                                     "members.parquet) into a teacher file and ensemble folder, without rescoring. "
                                     "With the run's own combination and weights it rebuilds its teacher_scores.tsv "
                                     "byte for byte.")
    cb.add_argument("--members", required=True, metavar="FILE", help="members.parquet of a scoring run")
    cb.add_argument("--combine", choices=("mean", "zscore"), default=None,
                    help="mean (the paper's T2) or zscore (each member standardised over all its scores); "
                         "default: the scoring run's")
    cb.add_argument("--weight", action="append", metavar="NAME=W",
                    help="a member's weight (repeatable); members not named keep the scoring run's weight")
    cb.add_argument("--out", required=True, metavar="DIR", help="writes DIR/teacher_scores.tsv and DIR/ensemble/")
    cb.set_defaults(fn=cmd_teachers_combine)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from kd.data import FormatError
    from kd.export import ExportError
    from kd.registry import NotADualEncoder, RegistryError

    try:
        return args.fn(args)
    except (RegistryError, NotADualEncoder, UsageError, FormatError, FileNotFoundError, ExportError) as e:
        print(f"kd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
