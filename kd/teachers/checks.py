"""Can a teacher member score? Cheap checks of a member spec, run before any model loads or Ray starts.

A member spec is `kd.configs.TeacherSpec.model_dump()`: name, kind (cross | bi | bm25), path, max_length, weight,
corpus, use_title, k1, b. The checks read only small files (kd_config.json, config.json, modules.json), never
weights, so they run inside config validation (kd.configs.TeacherSpec) as well as in the scoring driver. They raise
ValueError naming the member, e.g. "teacher 'minilm' (kind cross): … is a bi-encoder … use kind: bi".

This module imports no torch or transformers (config validation stays fast).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

KINDS = ("cross", "bi", "bm25")
# kd architectures that are dual encoders (Ranker.dual_encoder; tests/test_teachers.py checks this against the
# registry); only bert_dot is a bi-encoder member (a score is one dot product of two pooled vectors)
DUAL_ENCODERS = ("bert_dot", "colbert")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def member_label(spec: dict) -> str:
    """How messages name a member: "teacher 'x' (kind cross)"."""
    return f"teacher {spec.get('name')!r} (kind {spec.get('kind', 'cross')})"


def check_member(spec: dict, *, model_files: bool = True) -> None:
    """Raise ValueError naming the member if it cannot score as given; returns None when it can (as far as cheap
    checks tell: a hub id that is not cached locally is left to the loader).

    bm25: no path; a corpus file is required (its statistics define the scores). cross / bi: a path; a local kd
    folder must hold the right kind of kd model; a local HF folder must have a sequence-classification head for
    kind cross (a sentence-transformers bi-encoder has none: it would score with an untrained head) and none for
    kind bi. `model_files=False` (config validation) accepts a local folder that holds no model yet, since a
    pipeline validates its scoring stage against folders that earlier stages will fill; the scoring driver checks
    with True, before Ray starts.
    """
    label = member_label(spec)
    kind = spec.get("kind", "cross")
    if kind not in KINDS:
        raise ValueError(f"{label}: kind must be one of {list(KINDS)}")
    path, corpus = spec.get("path"), spec.get("corpus")
    if kind == "bm25":
        if path is not None:
            raise ValueError(f"{label}: path {path!r} is for cross/bi members; a BM25 member is defined by its "
                             "corpus statistics: give corpus: <passages file> and no path")
        if not corpus:
            raise ValueError(f"{label}: BM25 needs a corpus: the passages file (corpus.jsonl[.gz] or id<TAB>text "
                             "TSV) whose statistics (N, df, avgdl) define its scores; set corpus:")
        if not Path(corpus).expanduser().is_file():
            raise ValueError(f"{label}: corpus file not found: {corpus}")
        return
    if not path:
        raise ValueError(f"{label}: path is required (a hub name or a local model folder)")
    if corpus is not None:
        raise ValueError(f"{label}: corpus is for bm25 members only (got {corpus!r})")
    folder = _local_folder(str(path))
    if folder is None:
        return
    kd_config, hf_config = folder / "kd_config.json", folder / "config.json"
    if kd_config.is_file():
        arch = json.loads(kd_config.read_text()).get("architecture")
        if kind == "cross" and arch in DUAL_ENCODERS:
            hint = "; use kind: bi" if arch == "bert_dot" else " (kind bi takes bert_dot only)"
            raise ValueError(f"{label}: {path} holds a kd {arch} dual encoder, not a cross-encoder{hint}")
        if kind == "bi" and arch != "bert_dot":
            hint = "; use kind: cross" if arch not in DUAL_ENCODERS else ""
            raise ValueError(f"{label}: {path} holds a kd {arch} model, not a bi-encoder (bert_dot){hint}")
        return
    if hf_config.is_file():
        archs = json.loads(hf_config.read_text()).get("architectures") or []
        head = any(str(a).endswith("ForSequenceClassification") for a in archs)
        sentence_transformers = (folder / "modules.json").is_file() or (
            folder / "config_sentence_transformers.json").is_file()
        if kind == "cross" and not head:
            if sentence_transformers:
                raise ValueError(f"{label}: {path} is a bi-encoder (sentence-transformers folder, no "
                                 "classification head); use kind: bi")
            raise ValueError(f"{label}: {path} has no sequence-classification head (architectures: {archs}); as "
                             "a cross-encoder it would score with an untrained head; use kind: bi for an encoder")
        if kind == "bi" and head:
            raise ValueError(f"{label}: {path} is a cross-encoder (architectures: {archs}); use kind: cross")
        return
    if model_files:
        raise ValueError(f"{label}: {path} holds no model (neither kd_config.json nor config.json)")


def _local_folder(path: str) -> Path | None:
    """The folder a model argument names: a local folder, the packaged all-MiniLM-L6-v2 for its hub name, or a
    hub id's snapshot in the local hub cache; None when none of these is on this machine."""
    from kd.configs.catalog import local_model_folder, looks_local

    folder = local_model_folder(path)
    if folder is not None or looks_local(path):
        return folder
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(path, "config.json")
    except HFValidationError:  # not a well-formed hub id: config validation / the loader names the problem
        return None
    return Path(cached).parent if isinstance(cached, str) else None
