"""The quickstart's helpers: where its pipeline config is (`config_path`), and the offline smoke run
(`python -m jobs.quickstart --smoke`): every student, built on real pretrained weights, scores real SciFact pairs.

Students other than BERT_DOT get freshly initialised heads here, so their scores are not yet meaningful rankings;
BERT_DOT on all-MiniLM-L6-v2 is the pretrained bi-encoder itself, so its pos > neg accuracy is a real sanity check.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from kd.models import STUDENTS, build_student


def sample_path() -> Path:
    return Path(str(resources.files("kd") / "resources" / "scifact_sample.jsonl"))


def config_path() -> Path:
    """The quickstart pipeline config: configs/quickstart.yaml in a source checkout, else the identical copy
    packaged as kd/resources/quickstart/quickstart.yaml (tests keep the two equal)."""
    repo = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    if repo.is_file():
        return repo
    return Path(str(resources.files("kd") / "resources" / "quickstart" / "quickstart.yaml"))


def read_pairs(path: str | Path) -> list[dict]:
    """JSONL rows with `query`, `passage`, `label` (1 relevant / 0 not) and optional `qid`/`docid`."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark does not break line 1
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            missing = {"query", "passage", "label"} - row.keys()
            if missing:
                raise ValueError(f"{path}:{line_no}: missing field(s) {sorted(missing)}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no pairs")
    return rows


@dataclass
class SmokeResult:
    architecture: str
    parameters: int
    seconds: float
    mean_pos: float
    mean_neg: float
    pos_gt_neg: float  # fraction of queries whose relevant passage outscores the non-relevant one
    scores: list[float]


def smoke(backbone: str | None = None, pairs_file: str | Path | None = None, architectures=STUDENTS) -> list[SmokeResult]:
    rows = read_pairs(pairs_file or sample_path())
    queries = [r["query"] for r in rows]
    passages = [r["passage"] for r in rows]
    labels = torch.tensor([int(r["label"]) for r in rows])
    torch.manual_seed(0)
    results = []
    for arch in architectures:
        model = build_student(arch, backbone).eval()
        start = time.perf_counter()
        scores = model.predict(queries, passages, batch_size=16)
        seconds = time.perf_counter() - start
        by_query: dict[str, dict[int, float]] = {}
        for r, s in zip(rows, scores.tolist()):
            by_query.setdefault(r.get("qid", r["query"]), {})[int(r["label"])] = s
        pairs = [v for v in by_query.values() if 0 in v and 1 in v]
        wins = sum(v[1] > v[0] for v in pairs) / max(len(pairs), 1)
        results.append(SmokeResult(
            arch, model.num_parameters(), seconds, scores[labels == 1].mean().item(),
            scores[labels == 0].mean().item(), wins, scores.tolist(),
        ))
    return results
