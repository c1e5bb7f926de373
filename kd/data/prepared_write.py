"""Writing a prepared training folder (the core of jobs.prepare; the Ray Data tokenisation is kd/runtime/prepare.py).

Why: every Ray Train worker used to join the whole teacher file with its texts (a Python str per passage
occurrence: ≈ 39 GiB per worker at paper scale) and tokenise inside the step. Prepared once, the same examples are
a few flat arrays the workers memory-map (kd/data/prepared.py): per-triple row numbers into the distinct queries and
passages, float32 teacher scores, and each distinct text's word pieces (no special tokens, cut at a cap) with its
full word-piece count (what the pair truncation rule needs, kd/data/collate.py).

The rows come from the same readers and join as `kd.training.load_examples` (kd/data/rows.py): a bad line raises
FormatError naming the file and line (strict), lenient skips are counted in the manifest's `join`. The folder is
written under a temporary name beside the output and renamed into place last, so a killed prepare never leaves a
folder that looks complete (a leftover `.<name>.tmp-*` has no manifest and is not the named folder).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kd.configs.errors import ConfigError
from kd.data import FormatError
from kd.data.join import JoinStats
from kd.data.rows import excluded_queries, join_stats, joined_rows

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# source role → the distill config field that names the same file
SOURCE_FIELDS = {"scores": "teacher.scores", "triples": "data.triples", "queries": "data.queries",
                 "passages": "data.passages", "exclude_query_ids_from": "data.exclude_query_ids_from"}


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_source(path: str | Path) -> dict:
    """What the manifest records of an input file: absolute path, size, sha256."""
    p = Path(path).expanduser().resolve()
    return {"path": str(p), "size": p.stat().st_size, "sha256": sha256_file(p)}


def source_paths(cfg) -> dict[str, str]:
    """The input files of a prepare (or distill) config, by role (only those it names)."""
    d = cfg.data
    named = {"scores" if cfg.mode == "score_file" else "triples":
             cfg.teacher.scores if cfg.mode == "score_file" else d.triples,
             "queries": d.queries, "passages": d.passages, "exclude_query_ids_from": d.exclude_query_ids_from}
    return {role: path for role, path in named.items() if path}


def tokenizer_digest(tokenizer) -> str:
    """sha256 of what decides the word pieces: the vocabulary, and a fast tokenizer's normaliser, pre-tokeniser and
    post-processor (not its truncation / padding state, which calls change)."""
    state: dict = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))}
    if getattr(tokenizer, "is_fast", False):
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        state.update({k: spec.get(k) for k in ("normalizer", "pre_tokenizer", "post_processor", "model")})
        state["model"] = {k: v for k, v in (state["model"] or {}).items() if k != "vocab"}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


@dataclass
class PreparedRows:
    """The examples of a config as row numbers into the distinct texts (the prepare step's driver side)."""

    query_row: np.ndarray
    pos_row: np.ndarray
    neg_row: np.ndarray
    t_pos: np.ndarray | None
    t_neg: np.ndarray | None
    query_ids: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    passage_ids: list[str] = field(default_factory=list)
    passages: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def _row_of(index: dict[str, int], ids: list[str], texts: list[str], key: str, text: str) -> int:
    row = index.get(key)
    if row is None:
        row = index[key] = len(ids)
        ids.append(key)
        texts.append(text)
    return row


def collect_rows(cfg) -> PreparedRows:
    """Join the config's training file with its texts (kd/data/rows.py, as load_examples), drop excluded queries,
    keep the first data.max_examples; each distinct query / passage id gets a row, its text kept once."""
    excluded, stats = excluded_queries(cfg), JoinStats()
    out = PreparedRows(array("q"), array("q"), array("q"), array("d"), array("d"))
    qindex: dict[str, int] = {}
    pindex: dict[str, int] = {}
    dropped, cap = 0, cfg.data.max_examples
    for r in joined_rows(cfg, stats):
        if r.qid in excluded:
            dropped += 1
            continue
        if cap is not None and len(out.query_row) >= cap:
            continue  # the join still reads (and checks, and counts) every line, as load_examples does
        out.query_row.append(_row_of(qindex, out.query_ids, out.queries, r.qid, r.query))
        out.pos_row.append(_row_of(pindex, out.passage_ids, out.passages, r.pos_pid, r.pos))
        out.neg_row.append(_row_of(pindex, out.passage_ids, out.passages, r.neg_pid, r.neg))
        if cfg.mode == "score_file":
            out.t_pos.append(r.pos_score)
            out.t_neg.append(r.neg_score)
    n = len(out.query_row)
    out.stats = join_stats(stats, dropped)
    if cap is not None and stats.joined - dropped > cap:
        out.stats["truncated_to"] = cap
    if n == 0:
        path = cfg.teacher.scores if cfg.mode == "score_file" else cfg.data.triples
        raise FormatError(f"no training examples (mode {cfg.mode}): {out.stats}", path=path)
    out.stats["examples"] = n
    wide = np.int64 if max(len(out.query_ids), len(out.passage_ids)) >= 2**31 else np.int32
    out.query_row, out.pos_row, out.neg_row = (np.frombuffer(a, np.int64).astype(wide)
                                               for a in (out.query_row, out.pos_row, out.neg_row))
    if cfg.mode == "score_file":
        out.t_pos, out.t_neg = (np.frombuffer(a, np.float64).astype(np.float32) for a in (out.t_pos, out.t_neg))
    else:
        out.t_pos = out.t_neg = None
    return out


def tokenize_batch(tokenizer, texts: Sequence[str], cap: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Full word-piece counts (int32) and the first `cap` word pieces (int32) of each text, no special tokens."""
    enc = tokenizer(list(texts), add_special_tokens=False, truncation=False, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    return np.fromiter(map(len, enc), np.int32, len(enc)), [np.asarray(ids[:cap], np.int32) for ids in enc]


def pack(lengths: np.ndarray, pieces: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """One side's arrays: flat int32 ids, int64 offsets [n + 1], int32 full lengths."""
    offsets = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    ids = np.concatenate(pieces).astype(np.int32) if len(pieces) else np.zeros(0, np.int32)
    return {"ids": ids, "offsets": offsets, "lengths": np.asarray(lengths, np.int32)}


def ids_array(ids: list[str]) -> np.ndarray:
    """Text ids as a fixed-width UTF-8 bytes array (loads without pickle)."""
    return np.array([i.encode() for i in ids], dtype=f"S{max(1, max((len(i.encode()) for i in ids), default=1))}")


def write_folder(output: str | Path, rows: PreparedRows, queries: dict[str, np.ndarray],
                 passages: dict[str, np.ndarray], manifest: dict, overwrite: bool = False) -> Path:
    """Write every array and, last, manifest.json into a temporary folder beside `output`, then rename it into place
    (an existing folder is replaced only with `overwrite`)."""
    out = Path(output).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; set overwrite: true to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        arrays = {"query_row": rows.query_row, "pos_row": rows.pos_row, "neg_row": rows.neg_row,
                  "query_ids": ids_array(rows.query_ids), "passage_ids": ids_array(rows.passage_ids),
                  **{f"queries.{k}": v for k, v in queries.items()}, **{f"passages.{k}": v for k, v in passages.items()}}
        if rows.t_pos is not None:
            arrays.update(t_pos=rows.t_pos, t_neg=rows.t_neg)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        files = {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in arrays.items()}
        manifest = {"format_version": FORMAT_VERSION, **manifest, "files": files,
                    "bytes": sum((tmp / f"{n}.npy").stat().st_size for n in arrays),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


Tokenize = Callable[[list[str], int, str], dict[str, np.ndarray]]  # (texts, cap, what) → pack(...) of the texts


def tokenize_local(tokenizer_name: str, batch_size: int = 1024) -> Tokenize:
    """Tokenise in this process (what each Ray Data actor of kd/runtime/prepare.py runs on its batches)."""
    from transformers import AutoTokenizer

    from kd.models import backbone as bb

    tokenizer = AutoTokenizer.from_pretrained(bb.resolve(tokenizer_name))
    tokenizer.model_max_length = 1 << 30  # full counts of long texts are wanted, not a warning per text

    def tokenize(texts: list[str], cap: int, what: str) -> dict[str, np.ndarray]:
        lengths, pieces = [], []
        for i in range(0, len(texts), batch_size):
            n, p = tokenize_batch(tokenizer, texts[i : i + batch_size], cap)
            lengths.append(n)
            pieces += p
        return pack(np.concatenate(lengths), pieces)

    return tokenize


def prepare_folder(cfg, tokenize: Tokenize) -> dict:
    """jobs.prepare: digests of the sources, the join (bad lines fail here, before any tokenising), the distinct
    queries and passages tokenised by `tokenize` at the config's caps, the folder written atomically. Returns the
    manifest (+ "folder")."""
    from transformers import AutoTokenizer

    from kd.models import backbone as bb

    out = Path(cfg.output).expanduser()
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"field output: {out} exists; set overwrite: true to replace it")
    tokenizer = AutoTokenizer.from_pretrained(bb.resolve(cfg.tokenizer))
    sources = {role: file_source(path) for role, path in source_paths(cfg).items()}
    rows = collect_rows(cfg)
    queries = tokenize(rows.queries, cfg.max_query_length, "queries")
    passages = tokenize(rows.passages, cfg.max_passage_length, "passages")
    manifest = {
        "mode": cfg.mode, "sources": sources, "use_title": cfg.data.use_title, "strict": cfg.data.strict,
        "tokenizer": {"name": cfg.tokenizer, "class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
                      "digest": tokenizer_digest(tokenizer)},
        "max_query_length": cfg.max_query_length, "max_passage_length": cfg.max_passage_length,
        "counts": {"triples": int(rows.stats["examples"]), "queries": len(rows.queries),
                   "passages": len(rows.passages), "query_tokens": int(len(queries["ids"])),
                   "passage_tokens": int(len(passages["ids"]))},
        "join": rows.stats,
    }
    folder = write_folder(out, rows, queries, passages, manifest, overwrite=cfg.overwrite)
    return {**json.loads((folder / MANIFEST).read_text()), "folder": str(folder)}
