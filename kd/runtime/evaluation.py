"""jobs/evaluate.py runtime: corpus encoding on a Ray Data actor pool, MLflow runs per (model, dataset), the plot.

Corpus encoding: the driver cuts the corpus into the fixed length-sorted batches of `kd.evaluation.plan_batches`
(one Dataset row = one forward pass of `compute.batch_size` documents, with their corpus positions), and
`map_batches(EncoderActor, compute=ActorPoolStrategy(size=num_actors), num_gpus=gpus_per_actor)` encodes them; each
actor loads the document encoder once (a kd folder, `models:/…` downloaded in the actor, or an HF name) and writes
the embeddings of each call as one piece into the task's shard folder (kd/evaluation/shards.py; under output_dir,
which on a cluster is shared storage), named by its first batch, so 1 or n actors write the same pieces. Only piece
names and counts come back to the driver, which never holds the embeddings: the search reads them shard by shard.
Small corpora (fewer than `compute.local_max_docs` documents, one CPU actor) are encoded in the driver process
(`backend: auto`), by kd.evaluation.LocalCorpusEncoder, the TaskRunner's own in-process encoder.

MLflow: one run per (model, dataset) in `mlflow.experiment`, tagged kd.job=evaluate, kd.task, kd.model,
kd.dataset; metrics use MLflow-safe names (ndcg@10 → ndcg_at_10), the model's efficiency metrics (eff_*) are
logged beside the effectiveness ones, the result's info as params (info.architecture; for a teacher ensemble also
info.members, info.combination, info.member_weights), and the TREC run + result JSON are artifacts.
`plot_from_mlflow` reads those runs back and draws queries/s against nDCG@10, one point per model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kd.configs.evaluate import EvalConfig, PlotConfig
from kd.evaluation import (
    LocalCorpusEncoder,
    TaskResult,
    TaskRunner,
    encode_batch,
    format_table,
    load_spec,
    plan_batches,
    plot_tradeoff,
    run_all,
    write_piece,
)
from kd.evaluation.shards import piece_name
from kd.precision import resolve_precision

logger = logging.getLogger(__name__)


def _uri_resolver(tracking_uri: str | None) -> Callable[[str], Path]:
    """models:/… → local kd folder (downloaded once per URI and process)."""
    cache: dict[str, Path] = {}

    def resolve(uri: str) -> Path:
        if uri not in cache:
            import mlflow

            from kd.runtime.pyfunc import download_ranker_folder

            if tracking_uri:
                mlflow.set_tracking_uri(tracking_uri)
            cache[uri] = download_ranker_folder(uri)
        return cache[uri]

    return resolve


class EncoderActor:
    """Ray Data callable class: one document encoder per actor; each input row is one planned batch of documents
    (its number, corpus positions and texts); each call's embeddings are written as one piece into `folder`."""

    def __init__(self, spec: dict, tracking_uri: str | None, use_gpu: bool, threads: int | None, precision: str,
                 folder: str):
        if threads:
            torch.set_num_threads(threads)
        device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        self.model = load_spec(spec, _uri_resolver(tracking_uri), device)
        self.precision = precision
        self.folder = folder
        logger.info("encoder actor precision: %s", resolve_precision(precision, device))  # its own hardware

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, embs = [], []
        for idx, texts in zip(batch["rows"], batch["texts"]):
            rows.extend(int(i) for i in idx)
            embs.append(encode_batch(self.model, [str(t) for t in texts], "docs", precision=self.precision))
        name = piece_name(int(np.min(batch["batch"])))
        write_piece(self.folder, name, rows, np.concatenate(embs))
        return {"piece": np.asarray([name], dtype=object), "n": np.asarray([len(rows)], dtype=np.int64)}


class CorpusEncoder(LocalCorpusEncoder):
    """The TaskRunner's corpus encoder: Ray Data actor pool, or in-process (kd.evaluation.LocalCorpusEncoder), per
    `compute.backend`."""

    def __init__(self, cfg: EvalConfig, resolve_uri: Callable[[str], Path] | None = None):
        super().__init__(cfg, resolve_uri or _uri_resolver(cfg.mlflow.tracking_uri))
        self.last_backend: str | None = None

    def use_ray(self, n_docs: int) -> bool:
        c = self.cfg.compute
        if c.backend != "auto":
            return c.backend == "ray"
        return n_docs > c.local_max_docs or c.num_actors > 1 or bool(c.gpus_per_actor)

    def __call__(self, spec: dict, model, docids: list[str], texts: list[str], folder: Path) -> None:
        if not self.use_ray(len(docids)):
            self.last_backend = "local"
            return super().__call__(spec, model, docids, texts, folder)
        self.last_backend = "ray"
        encode_corpus_ray(spec, texts, self.cfg, folder)


def encode_corpus_ray(spec: dict, texts: list[str], cfg: EvalConfig, folder: Path) -> None:
    """Encode `texts` on a Ray Data actor pool; the actors write the embeddings as pieces into `folder` (an empty
    shard folder all Ray nodes can reach), rows = positions in `texts`."""
    import pyarrow as pa
    import ray

    from kd.runtime.cluster import ensure_ray
    from kd.progress import Progress
    from kd.runtime.progress import quiet_ray_data

    ensure_ray()
    quiet_ray_data()
    c = cfg.compute
    gpus = c.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    plan = plan_batches(texts, c.batch_size)
    tables = []
    for s in range(0, len(plan), c.batches_per_call):
        rows = plan[s : s + c.batches_per_call]
        tables.append(pa.table({
            "batch": pa.array(range(s, s + len(rows)), type=pa.int64()),
            "rows": pa.array(rows, type=pa.list_(pa.int64())),
            "texts": pa.array([[texts[i] for i in idx] for idx in rows], type=pa.list_(pa.string())),
        }))
    threads = c.threads_per_actor or max(1, int(c.cpus_per_actor))
    ds = ray.data.from_arrow(tables).map_batches(
        EncoderActor,
        fn_constructor_kwargs={"spec": spec, "tracking_uri": cfg.mlflow.tracking_uri, "use_gpu": gpus > 0,
                               "threads": threads, "precision": c.precision, "folder": str(Path(folder).resolve())},
        batch_size=c.batches_per_call,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=c.num_actors),
        num_cpus=c.cpus_per_actor,
        num_gpus=gpus or None,
    )
    logger.info("encoding %d documents in %d batches on %d actor(s) (%.2g CPU, %.2g GPU, %d threads each) into %s",
                len(texts), len(plan), c.num_actors, c.cpus_per_actor, gpus, threads, folder)
    progress = Progress(f"encoding corpus ({spec['name']})", len(texts), unit="docs", enabled=cfg.show_progress)
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        progress.update(int(np.sum(b["n"])))
    progress.close()


# ------------------------------------------------------------------------------------------------------ MLflow
def _log_result(cfg: EvalConfig, result: TaskResult, spec: dict | None, eff: dict[str, float]) -> None:
    import mlflow

    from kd.configs.base import to_flat_dict
    from kd.runtime.tracking import log_params, mlflow_run
    from kd.training import metric_key

    prefix = f"{cfg.mlflow.run_name}/" if cfg.mlflow.run_name else ""
    name = f"{prefix}{result.model or 'baseline'}/{result.dataset}"
    tags = {"kd.job": "evaluate", "kd.task": result.task, "kd.dataset": result.dataset,
            "kd.model": result.model or "", "kd.model_path": (spec or {}).get("path") or ""}
    with mlflow_run(cfg.mlflow.model_copy(update={"run_name": None}), name, tags=tags) as run:
        if run is None:
            return
        task = next(t for t in cfg.tasks if result.dataset == t.name or result.dataset.startswith(f"{t.name}-"))
        params = {f"task.{k}": v for k, v in to_flat_dict(task).items()}
        params.update({f"model.{k}": v for k, v in (spec or {}).items()})
        params.update({f"compute.{k}": v for k, v in to_flat_dict(cfg.compute).items()})
        params.update({f"info.{k}": _param(v) for k, v in result.info.items() if _param(v) is not None})
        log_params(params)
        metrics = {metric_key(k): float(v) for k, v in result.metrics.items()}
        if result.task != "efficiency":
            metrics.update({k: v for k, v in eff.items() if k not in metrics})
        metrics.update({f"info_{k}": float(v) for k, v in result.info.items()
                        if k in ("n_queries", "n_docs", "seconds", "seconds_corpus", "pairs")})
        mlflow.log_metrics(metrics)
        for f in result.files.values():
            if Path(f).is_file():
                mlflow.log_artifact(f)


def _param(value: Any) -> Any:
    """An info value as an MLflow param: scalars as they are, a list of scalars comma-joined (a teacher ensemble's
    members: "bm25,minilm"), None (not logged) for anything nested."""
    if isinstance(value, list):
        return ",".join(map(str, value)) if all(isinstance(v, (str, int, float, bool)) for v in value) else None
    return None if isinstance(value, dict) else value


def evaluate(cfg: EvalConfig, *, on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Run every task of `cfg` for every model (efficiency first, so each effectiveness run carries the model's
    speed), log each result to MLflow, write <output_dir>/results.json, draw the plot when configured."""
    resolve = _uri_resolver(cfg.mlflow.tracking_uri)  # one download per URI for the query and document models
    encoder = CorpusEncoder(cfg, resolve)
    runner = TaskRunner(cfg, resolve_uri=resolve, corpus_encoder=encoder)
    logger.info("evaluation precision: %s", resolve_precision(cfg.compute.precision, runner.device))
    runner.preflight()
    specs = {s.name: s.model_dump() for s in cfg.models}
    eff: dict[str | None, dict[str, float]] = {}

    def log(result: TaskResult) -> None:
        if result.task == "efficiency":
            eff[result.model] = result.metrics
        if result.task == "dense" and encoder.last_backend and not result.reused:
            result.info["encoder_backend"] = encoder.last_backend
        if cfg.mlflow.enabled and not result.reused:  # a reused result was logged by the run that made it
            _log_result(cfg, result, specs.get(result.model or ""), eff.get(result.model, {}))
        if on_result is not None:
            on_result(result)

    results = run_all(cfg, runner, on_result=log)
    if cfg.plot is not None and cfg.plot.enabled and cfg.mlflow.enabled:
        out = plot_from_mlflow(cfg, cfg.plot)
        logger.info("efficiency-effectiveness plot: %s", out)
    return results


def evaluate_model(path: str, tasks: list[dict], *, name: str | None = None, output_dir: str = "outputs/eval",
                   mlflow: dict | None = None, compute: dict | None = None, metrics: list[str] | None = None,
                   **spec: Any) -> list[TaskResult]:
    """One model (kd folder, models:/name@alias or HF name) through `tasks` (dicts as in an eval config), e.g. from
    the distill or sweep jobs right after registering a student. `spec`: further model fields (layers, doc_path,
    options)."""
    data: dict[str, Any] = {
        "models": [{"name": name or Path(str(path).rstrip("/")).name or "model", "path": str(path), **spec}],
        "tasks": tasks, "output_dir": output_dir,
    }
    if mlflow is not None:
        data["mlflow"] = mlflow
    if compute is not None:
        data["compute"] = compute
    if metrics is not None:
        data["metrics"] = metrics
    return evaluate(EvalConfig.model_validate(data))


# -------------------------------------------------------------------------------------------------------- plot
def plot_points(cfg: EvalConfig, plot: PlotConfig) -> tuple[list[dict[str, Any]], str]:
    """(label, x, y) per model from the MLflow runs of the experiment: y from the newest run of `plot.dataset`
    per model, x from that run or else the model's newest efficiency run."""
    import mlflow

    from kd.runtime.tracking import use_experiment

    experiment = plot.experiment or cfg.mlflow.experiment
    use_experiment(cfg.mlflow.model_copy(update={"experiment": experiment}))
    dataset = plot.dataset or next((t.name for t in cfg.tasks if t.task in ("dense", "rerank")), None)
    if dataset is None:
        raise ValueError("plot.dataset: name the dataset (kd.dataset tag) whose effectiveness to plot")
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.`kd.job` = 'evaluate'",
                              order_by=["attributes.start_time DESC"], output_format="list")
    eff: dict[str, dict[str, float]] = {}
    contended: dict[str, bool] = {}
    for r in runs:
        m = r.data.tags.get("kd.model")
        if m and r.data.tags.get("kd.task") == "efficiency" and m not in eff:
            eff[m] = r.data.metrics
            contended[m] = r.data.params.get("info.contended") == "True"
    points, seen = [], set()
    for r in runs:
        m = r.data.tags.get("kd.model")
        if not m or m in seen or r.data.tags.get("kd.dataset") != dataset:
            continue
        y = r.data.metrics.get(plot.y_metric)
        x = r.data.metrics.get(plot.x_metric, eff.get(m, {}).get(plot.x_metric))
        if x is None or y is None:
            continue
        seen.add(m)
        points.append({"label": m, "x": float(x), "y": float(y), "run_id": r.info.run_id,
                       "contended": contended.get(m, False)})
    return points, dataset


def plot_from_mlflow(cfg: EvalConfig, plot: PlotConfig | None = None) -> Path:
    plot = plot or cfg.plot or PlotConfig()
    points, dataset = plot_points(cfg, plot)
    if not points:
        raise ValueError(f"no MLflow run in experiment {plot.experiment or cfg.mlflow.experiment!r} has both "
                         f"{plot.y_metric} for dataset {dataset!r} and {plot.x_metric}")
    xlabel = _pretty(plot.x_metric)
    ylabel = f"{_pretty(plot.y_metric)} ({dataset})"
    return plot_tradeoff(points, plot.output, xlabel=xlabel, ylabel=ylabel,
                         title=plot.title or f"Efficiency vs effectiveness on {dataset}")


def _pretty(metric: str) -> str:
    if metric.startswith("eff_"):
        part, _, rest = metric[4:].partition("_bs")
        bs, _, unit = rest.partition("_")
        what = {"query_encode": "query encoding", "rerank": "re-ranking"}.get(part, part)
        unit = {"qps": "queries/s", "pairs_per_s": "pairs/s"}.get(unit, unit)
        return f"{what} {unit} (batch {bs})"
    return metric.replace("_at_", "@").replace("ndcg", "nDCG").replace("mrr", "MRR")


__all__ = ["CorpusEncoder", "EncoderActor", "encode_corpus_ray", "evaluate", "evaluate_model", "format_table",
           "plot_from_mlflow", "plot_points"]
