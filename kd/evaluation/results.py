"""What a (model, task) evaluation produces and how it is kept: `TaskResult`, the metrics of a run against qrels, the
atomic JSON writer, and `result_key`, the digest by which a rerun reuses an earlier result."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd.data.formats import Qrels, Run
from kd.eval_models import ensemble_inputs
from kd.evaluation.checks import check_overlap
from kd.metrics import EvalResult, evaluate
from kd.models.loader import is_model_uri


@dataclass
class TaskResult:
    """One (model, task) evaluation: metrics and what produced them."""

    model: str | None
    task: str
    dataset: str
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    key: str | None = None  # `result_key` of what produced it (run_all reuses a result whose key still matches)
    reused: bool = False  # taken from an earlier run's results.json (already logged to MLflow then)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "dataset": self.dataset, "metrics": self.metrics,
                "info": self.info, "files": self.files, "key": self.key}


def eval_metrics(run: Run, qrels: Qrels, metrics: Sequence[str], relevance_level: int, *, run_source: str,
                 qrels_source: str) -> tuple[dict[str, float], EvalResult]:
    check_overlap(run, qrels, run_source, qrels_source)
    res = evaluate(run, qrels, metrics=tuple(metrics), relevance_level=relevance_level)
    return {k: float(v) for k, v in res.items()}, res


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _stamp(path: str) -> Any:
    """Size and mtime of a file, of every file in a folder; None for what is not local (a hub name)."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p.stat().st_size, p.stat().st_mtime_ns]
    if p.is_dir():
        return sorted([str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns] for f in p.rglob("*")
                      if f.is_file())
    return None


def result_key(cfg, task, spec=None) -> str | None:
    """A digest of everything a (model, task) result depends on: the task, the model spec, metrics, relevance,
    compute and MLflow settings, and the size/mtime of every input file and model folder (a model retrained into the
    same folder changes it). None for a `models:/` or `runs:/` model, whose alias can move: always recomputed."""
    from kd.configs.base import fingerprint

    paths = [v for k, v in task.model_dump().items() if k in ("run", "qrels", "queries", "passages", "corpus", "beir")
             and v]
    for path in filter(None, (spec.path, spec.doc_path) if spec is not None else ()):
        if is_model_uri(path):
            return None
        paths += [path, *ensemble_inputs(path)]  # an ensemble's scores also depend on its members and corpora
    what = {"task": task.model_dump(mode="json"), "spec": spec.model_dump(mode="json") if spec else None,
            "metrics": list(cfg.metrics_for(task)), "relevance": cfg.relevance_for(task),
            "compute": cfg.compute.model_dump(mode="json"), "mlflow": cfg.mlflow.model_dump(mode="json"),
            "inputs": {p: _stamp(p) for p in paths}}
    return fingerprint(what)


def _earlier_results(path: Path) -> dict[str, list[TaskResult]]:
    """An earlier run's results.json by key: the results whose files are all still there."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, list[TaskResult]] = {}
    for d in rows if isinstance(rows, list) else []:
        if isinstance(d, dict) and d.get("key") and all(Path(f).is_file() for f in (d.get("files") or {}).values()):
            r = TaskResult(d["model"], d["task"], d["dataset"], d["metrics"], d["info"], d["files"], d["key"], True)
            out.setdefault(d["key"], []).append(r)
    return out
