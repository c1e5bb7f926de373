"""Typed config of jobs/evaluate.py: which models, which tasks, where results go (validated before any Ray work).

    models:                       # every model runs every task
      - {name: minilm, path: sentence-transformers/all-MiniLM-L6-v2}
      - {name: minilm-2l, path: sentence-transformers/all-MiniLM-L6-v2, layers: [0, 5]}
      - {name: qenc, path: models:/query-encoder@current, doc_path: sentence-transformers/all-MiniLM-L6-v2}
    tasks:
      - {task: run, name: dl19-bm25, run: ..., qrels: ..., relevance_level: 2}
      - {task: dense, name: scifact, beir: ../shared/data/beir/scifact}
      - {task: rerank, name: dl19, run: ..., queries: ..., corpus: ..., qrels: ..., relevance_level: 2}
      - {task: document, name: scifact-doc, beir: ..., window: 100, stride: 50, aggregations: [maxp, firstp]}
      - {task: efficiency, name: efficiency, queries: ..., passages: ..., batch_sizes: [1, 4, 16, 64]}

A model `path` is a saved kd folder, a teacher-ensemble folder (kd_ensemble.json, written by jobs.score_teachers:
evaluated with its combined score; rerank, document and efficiency tasks only), `models:/name@alias` (or `runs:/…`,
downloaded from MLflow), or an HF / sentence-transformers name or folder, which is loaded as a BERT_DOT bi-encoder
(pooling and normalisation read from the sentence-transformers folder).

A task's `metrics` and `relevance_level` default to the job's (`relevance_level`: 1 for BEIR-folder tasks, whose
qrels are binary); the validated config's tasks carry the resolved values. Only kd.configs and kd.eval_models are
imported by the validator: no torch.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from kd.configs.base import Strict
from kd.configs.catalog import LAYER_SCHEMES
from kd.configs.common import MLflowConfig
from kd.configs.fields import (ExistingFile, ModelPath, NonEmptyModelPath, PlainBeirFolder, SafeName, check_metric,
                               qrels_problem, repeated)
from kd.eval_models import ENSEMBLE, dense_problem, saved_architecture

AGGREGATIONS = ("maxp", "firstp", "sump", "avgp")  # + "top<k>": mean of a document's k best passages


def check_aggregation(name: str) -> str:
    n = name.lower()
    if n in AGGREGATIONS:
        return n
    if n.startswith("top") and n[3:].isdigit() and int(n[3:]) >= 1:
        return n
    raise ValueError(f"unknown aggregation {name!r}; known: {list(AGGREGATIONS)} or top<k> (mean of the k best)")


def check_metrics(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("at least one metric")
    for m in v:
        check_metric(m)
    return v


class ModelSpec(Strict):
    """One model under evaluation."""

    name: SafeName = Field(description="label in tables, MLflow tags and plots; the folder output_dir/<name>/")
    path: NonEmptyModelPath = Field(description="kd folder | teacher-ensemble folder | models:/name@alias | HF or "
                                                "sentence-transformers name/path")
    doc_path: ModelPath | None = Field(None, description="dense task: the document encoder (default: `path`); "
                                                         "seed 003 keeps the teacher's index and swaps only the query "
                                                         "encoder")
    options: dict[str, Any] = Field({}, description="BertDot options when `path` is an HF/ST encoder "
                                                    "(max_query_length, max_passage_length, pooling, normalize)")
    doc_options: dict[str, Any] = Field({}, description="the same for `doc_path`")
    layers: str | list[int] | None = Field(None, description="keep a layer subset (kd.init.layer_subset_student): "
                                                             "a scheme (top-bottom, ...) with num_layers, or [0, 5]")
    num_layers: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _layers(self):
        if self.layers is not None and saved_architecture(self.path) == ENSEMBLE:
            raise ValueError(f"field layers: {self.path} is a teacher ensemble; a layer subset applies to one "
                             "encoder, not to an ensemble")
        if isinstance(self.layers, str):
            if self.layers not in LAYER_SCHEMES:
                raise ValueError(f"field layers: unknown scheme {self.layers!r}; known: {list(LAYER_SCHEMES)}")
            if self.num_layers is None:
                raise ValueError(f"field num_layers: scheme {self.layers!r} needs num_layers")
        return self


class ComputeConfig(Strict):
    """How the corpus is encoded (dense task) and how pairs are scored.

    backend: `ray` = Ray Data actor pool (`ActorPoolStrategy(size=num_actors)`, `num_gpus=gpus_per_actor`),
    `local` = in this process, `auto` = ray when the corpus has more than `local_max_docs` documents, several actors
    or GPUs are asked for, else local. Both backends encode exactly the same fixed batches (the corpus sorted by
    length, cut every `batch_size` documents), so the embeddings do not depend on how many actors ran them.
    """

    backend: Literal["auto", "ray", "local"] = "auto"
    local_max_docs: int = Field(20_000, ge=0)
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0, description="on 2-CPU machines keep headroom: e.g. 2 actors x 0.5")
    gpus_per_actor: float | None = Field(None, ge=0, description="None: 1 when the Ray cluster has GPUs, else 0")
    threads_per_actor: int | None = Field(None, ge=1, description="torch threads in each actor (None: max(1, cpus))")
    batches_per_call: int = Field(4, ge=1, description="encoding batches handed to an actor per call")
    batch_size: int = Field(64, ge=1, description="texts (or pairs) per forward pass")
    shard_size: int = Field(65_536, ge=1, description="dense task: documents per search shard. Encoders write the "
                                                      "corpus embeddings to <output_dir>/_embeddings/, the search "
                                                      "reads one shard at a time (driver memory shard_size x dim x 4 "
                                                      "bytes: 96 MiB at 384-d) and merges the top-k exactly, so the "
                                                      "run does not depend on it")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast where the hardware has native bf16 (a CUDA GPU from Ampere on, a CPU "
                            "with AVX512-BF16/AMX: about 2x faster), fp32 elsewhere (kd.precision.resolve_precision); "
                            "bf16: autocast everywhere (warns where emulated: ~8x slower on AVX2); fp32: never")


class _Task(Strict):
    name: SafeName = Field(description="dataset label (MLflow tag kd.dataset, file names)")
    metrics: list[str] | None = None  # None: the job's `metrics` (filled in by EvalConfig)
    relevance_level: int | None = Field(None, ge=1, description="binarisation grade for MRR/Recall/MAP; "
                                                               "None: the job's default (TREC DL: 2)")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v):
        return v if v is None else check_metrics(v)


class RunTask(_Task):
    """Evaluate an existing TREC run as it is (a baseline row, no model)."""

    task: Literal["run"]
    run: ExistingFile
    qrels: ExistingFile


class _BeirTask(_Task):
    """A task over a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), checked when the config loads.
    Its qrels are binary: relevance_level defaults to 1."""

    beir: PlainBeirFolder
    split: str = "test"

    @model_validator(mode="after")
    def _split(self):
        problem = qrels_problem(self.beir, self.split)
        if problem:
            raise ValueError(problem)
        return self


class DenseTask(_BeirTask):
    """Full-corpus dense retrieval over a BEIR folder: corpus encoded once, exact inner-product FAISS index (or
    HNSW), the judged queries of `split` encoded by the model, top_k written as a TREC run."""

    task: Literal["dense"]
    top_k: int = Field(1000, ge=1)
    index: Literal["flat", "hnsw"] = "flat"
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(512, ge=1)
    use_title: bool = True


class RerankTask(_Task):
    """The model re-scores the top_k candidates of a first-stage TREC run (any architecture)."""

    task: Literal["rerank"]
    run: ExistingFile
    queries: ExistingFile = Field(description="queries.jsonl or id<TAB>text")
    corpus: ExistingFile = Field(description="corpus.jsonl or id<TAB>text")
    qrels: ExistingFile
    top_k: int = Field(100, ge=1)
    use_title: bool = True


class DocumentTask(_BeirTask):
    """Long documents split into passages of `window` words every `stride` words (title repeated in front of every
    passage), each passage scored by the model for the query, passage scores aggregated to one document score.

    Candidates: the top_k documents of `run` (a TREC run), or of BM25 over the corpus (kd.data.bm25_beir) when no
    run is given. Words, not tokens, so every model sees the same passages whatever its tokenizer.
    """

    task: Literal["document"]
    run: ExistingFile | None = None
    top_k: int = Field(100, ge=1)
    window: int = Field(100, ge=1, description="words per passage")
    stride: int = Field(50, ge=1, description="words between passage starts")
    max_passages: int | None = Field(None, ge=1, description="at most this many passages per document")
    aggregations: list[str] = Field(["maxp", "firstp", "sump", "avgp", "top2"], min_length=1)
    use_title: bool = True

    @field_validator("aggregations")
    @classmethod
    def _aggs(cls, v: list[str]) -> list[str]:
        return [check_aggregation(a) for a in v]

    @model_validator(mode="after")
    def _check(self):
        if self.stride > self.window:
            raise ValueError(f"field stride: {self.stride} > window {self.window} would skip words")
        return self


class EfficiencyTask(_Task):
    """Queries/s and latency p50/p95 of query encoding (dual encoders) and re-ranking (every model) per batch size,
    after `warmup` untimed batches. Inputs: real queries; re-ranking pairs them with `run`'s candidates (or the
    passages file in order). Re-ranking queries/s counts a query as `rerank_depth` scored pairs."""

    task: Literal["efficiency"]
    queries: ExistingFile
    passages: ExistingFile
    run: ExistingFile | None = None
    batch_sizes: list[Annotated[int, Field(ge=1)]] = [1, 4, 16, 64]
    warmup: int = Field(3, ge=0, description="untimed batches per batch size")
    repeats: int = Field(20, ge=1, description="timed batches per batch size")
    min_seconds: float = Field(0.0, ge=0, description="keep timing until at least this long has passed")
    rerank_depth: int = Field(100, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    parts: list[Literal["query_encode", "rerank"]] = ["query_encode", "rerank"]
    use_title: bool = True


Task = Annotated[Union[RunTask, DenseTask, RerankTask, DocumentTask, EfficiencyTask], Field(discriminator="task")]


class PlotConfig(Strict):
    """Efficiency-effectiveness plot from the MLflow runs of `experiment` (default: the job's experiment)."""

    enabled: bool = True
    output: str = "docs/efficiency_effectiveness.png"
    experiment: str | None = None
    dataset: str | None = Field(None, description="kd.dataset tag of the effectiveness runs (None: first task)")
    x_metric: str = "eff_query_encode_bs1_qps"
    y_metric: str = "ndcg_at_10"
    title: str | None = None


class EvalConfig(Strict):
    models: list[ModelSpec] = []
    tasks: list[Task] = []
    metrics: list[str] = ["ndcg@10", "mrr@10", "recall@100", "recall@1000", "map"]
    relevance_level: int = Field(2, ge=1, description="default binarisation grade (TREC DL: 2; BEIR tasks use 1 "
                                                      "unless set: their qrels are binary)")
    compute: ComputeConfig = ComputeConfig()
    output_dir: str = "outputs/eval"
    show_progress: bool = True
    mlflow: MLflowConfig = MLflowConfig(experiment="kd-eval")
    plot: PlotConfig | None = None

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v):
        return check_metrics(v)

    @model_validator(mode="after")
    def _check(self):
        errors = []
        for what, names in (("models", [m.name for m in self.models]), ("tasks", [t.name for t in self.tasks])):
            dupes = repeated(names)
            if dupes:
                errors.append(f"field {what}: names must be unique, repeated: {dupes}")
        needs_model = [i for i, t in enumerate(self.tasks) if t.task != "run"]
        if needs_model and not self.models:
            errors.append(f"field models: task {self.tasks[needs_model[0]].name!r} needs at least one model")
        for t in (t for t in self.tasks if t.task == "dense"):  # before any data or model work
            for i, m in enumerate(self.models):
                for field, path in (("path", m.path), ("doc_path", m.doc_path)):
                    problem = dense_problem(path) if path else None
                    if problem:
                        errors.append(f"field models.{i}.{field}: model {m.name!r} cannot run the dense task "
                                      f"{t.name!r}: {problem}")
        if not self.tasks and not (self.plot and self.plot.enabled):
            errors.append("field tasks: nothing to do (no task and no plot)")
        if errors:
            raise ValueError("\n".join(errors))
        self._fill_task_defaults()
        return self

    def _fill_task_defaults(self) -> None:
        """Every task carries its metrics and binarisation grade: its own, else the job's (see relevance_for)."""
        filled = [t.model_copy(update={"metrics": self.metrics_for(t), "relevance_level": self.relevance_for(t)})
                  for t in self.tasks]
        self.__dict__["tasks"] = filled  # not self.tasks = ...: assignment would validate the whole config again

    def relevance_for(self, task) -> int:
        """A task's binarisation grade: its own, else 1 for BEIR folders (binary qrels), else the job default."""
        if task.relevance_level is not None:
            return task.relevance_level
        if isinstance(task, (DenseTask, DocumentTask)):
            return 1
        return self.relevance_level

    def metrics_for(self, task) -> list[str]:
        return list(task.metrics or self.metrics)
