"""What evaluation knows about a model: what a folder holds (read without loading it) and the facts each result
reports about the model (architecture, layers, parameters; for a teacher ensemble its members and combination).

Torch-free at import: the config validator (kd.configs.evaluate) calls `saved_architecture` / `dense_problem`, so a
dense task given a teacher ensemble or a cross-encoder fails when the config loads, before any data or model work.

A teacher-ensemble folder holds `kd_ensemble.json` (kd.teachers.save_ensemble: the members' specs and the fitted
combination). It is evaluated like any model — `kd.models.loader.load_ranker` returns
`kd.teachers.load_ensemble(path)`, which scores (query, passage) pairs with the combined score — but it has no
single-vector encoder, so of the tasks only rerank, document and efficiency (re-ranking only: it encodes no query on
its own) apply.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENSEMBLE = "ensemble"  # the architecture name reported for a teacher ensemble (TeacherEnsemble.architecture)
# kd.teachers.ENSEMBLE_FILE, spelled here because kd.teachers imports torch (tests/test_evaluate_ensemble.py checks
# that the two agree)
ENSEMBLE_FILE = "kd_ensemble.json"
KD_CONFIG_FILE = "kd_config.json"


def saved_architecture(path: str | Path) -> str | None:
    """The architecture a local folder holds, without loading it: "ensemble" for a teacher-ensemble folder
    (kd_ensemble.json), the `architecture` of a kd folder's kd_config.json, else None (an HF / sentence-transformers
    name or folder, loaded as bert_dot; a `models:/` URI, known only once downloaded)."""
    folder = Path(str(path)).expanduser()
    if (folder / ENSEMBLE_FILE).is_file():
        return ENSEMBLE
    cfg = folder / KD_CONFIG_FILE
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("architecture")


def dense_problem(path: str | Path) -> str | None:
    """Why the model folder at `path` cannot do dense retrieval (one vector per text, inner product), or None."""
    arch = saved_architecture(path)
    if arch == ENSEMBLE:
        return (f"{path} is a teacher ensemble ({ENSEMBLE_FILE}): it combines its members' scores of (query, "
                "passage) pairs and has no single-vector encoder; evaluate it with the rerank task")
    if arch is not None and arch != "bert_dot":
        return (f"{path} is a {arch!r}; the dense task needs a single-vector bi-encoder (bert_dot); evaluate other "
                "architectures with the rerank task")
    return None


def ensemble_inputs(path: str | Path) -> list[str]:
    """The local files and folders a teacher-ensemble folder's scores depend on besides kd_ensemble.json: every
    member's model folder and BM25 corpus (the `path` and `corpus` values of its member specs). [] for any other
    folder. Used by kd.evaluation.result_key (kd/evaluation/results.py), so a retrained member or a changed corpus
    is not served from an earlier result."""
    file = Path(str(path)).expanduser() / ENSEMBLE_FILE
    if not file.is_file():
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("path", "corpus") and isinstance(v, str) and Path(v).expanduser().exists():
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(file.read_text()))
    return sorted(set(found))


def is_ensemble(model: Any) -> bool:
    return getattr(model, "architecture", None) == ENSEMBLE


def num_layers(model: Any) -> int | None:
    """Transformer layers of a loaded model: its encoder's (None without a transformer encoder, e.g. TK). For a
    teacher ensemble, the largest member's layer count — the depth of its deepest neural member, which sets its
    cost; None when no member has layers (BM25 alone)."""
    if is_ensemble(model):
        counts = [n for n in (num_layers(m) for m in getattr(model, "members", ())) if n is not None]
        return max(counts) if counts else None
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        return None
    from kd.models import backbone as bb

    try:
        return bb.num_layers(encoder)
    except TypeError:
        return None


def ensemble_info(model: Any) -> dict[str, Any]:
    """A teacher ensemble's members (names, in order), combination method and member weights; {} for other
    models. Results carry it in `info` (MLflow params info.members, info.combination, info.member_weights)."""
    if not is_ensemble(model):
        return {}
    comb = model.combination
    return {"members": [str(n) for n in model.names], "combination": comb.method,
            "member_weights": [float(w) for w in comb.weights]}


def model_info(model: Any) -> dict[str, Any]:
    """What an efficiency result says about the model: architecture, layers (`num_layers`), parameters (every
    member's for an ensemble; BM25 has none) and, for an ensemble, `ensemble_info`."""
    return {"architecture": model.architecture, "num_layers": num_layers(model),
            "parameters": int(model.num_parameters()), **ensemble_info(model)}
