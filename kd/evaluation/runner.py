"""`TaskRunner`: the tasks of an EvalConfig for one model at a time, in-process; `run_all`: every task for every model,
with results.json rewritten after each result and reused on a rerun while their `result_key` still matches."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kd.data import FormatError
from kd.data.formats import Qrels, Run
from kd.evaluation.checks import check_corpus
from kd.evaluation.dense import dense_task, doc_encoder_spec
from kd.evaluation.document import document_task
from kd.evaluation.efficiency import efficiency_task
from kd.evaluation.encoding import CorpusEncoder, LocalCorpusEncoder
from kd.evaluation.inputs import PREPARE
from kd.evaluation.rerank import baseline_task, rerank_task
from kd.evaluation.results import TaskResult, _earlier_results, result_key, write_json
from kd.evaluation.shards import ShardSet, reset_folder
from kd.models import Ranker
from kd.models.loader import load_spec, pick_device
from kd.precision import resolve_precision

logger = logging.getLogger(__package__)  # "kd.evaluation", as the job log has always named it


class TaskRunner:
    """Runs the tasks of an EvalConfig for one model at a time, in-process; writes TREC runs and JSON per result.

    `preflight` reads and checks every task's inputs once (kd/evaluation/inputs.py); the tasks consume them (a task
    run without preflight prepares its inputs on first use). `corpus_encoder` replaces in-process corpus encoding
    (kd.runtime.evaluation: Ray Data actors). Loaded BEIR folders, texts and corpus embeddings (per document encoder
    and corpus) are cached for the runner's lifetime, so several query encoders over one teacher index encode the
    corpus once.
    """

    def __init__(self, cfg, *, resolve_uri: Callable[[str], Path] | None = None,
                 corpus_encoder: CorpusEncoder | None = None):
        from kd.configs.evaluate import EvalConfig

        if not isinstance(cfg, EvalConfig):
            raise TypeError("cfg must be a kd.configs.EvalConfig")
        self.cfg = cfg
        self.resolve_uri = resolve_uri
        self.out = Path(cfg.output_dir)
        self.device = pick_device(cfg.compute.device)
        self.corpus_encoder = corpus_encoder or LocalCorpusEncoder(cfg, resolve_uri, self.device)
        self._beir: dict[tuple, Any] = {}
        self._texts: dict[tuple, Any] = {}
        self._inputs: dict[str, Any] = {}
        self._doc_emb: dict[str, ShardSet] = {}

    # ------------------------------------------------------------------------------------------------- data
    def memo(self, key: tuple, make: Callable[[], Any]) -> Any:
        """`make()` once per key for the runner's lifetime (runs, qrels, texts, a BM25 first stage): a file that
        several tasks use is read once per job."""
        if key not in self._texts:
            self._texts[key] = make()
        return self._texts[key]

    def beir(self, folder: str, split: str):
        from kd.data import load_beir

        key = (str(Path(folder).resolve()), split)
        if key not in self._beir:
            ds = load_beir(folder, split)
            check_corpus(ds.corpus, str(Path(folder) / "corpus.jsonl"))
            if not ds.qrels:
                raise FormatError(f"no judgments for split {split!r}", path=Path(folder) / "qrels" / f"{split}.tsv")
            self._beir[key] = ds
        return self._beir[key]

    def trec_run(self, path: str) -> Run:
        from kd.data import read_trec_run

        return self.memo(("run", str(Path(path).resolve())), lambda: read_trec_run(path))

    def qrels(self, path: str) -> Qrels:
        from kd.data import read_qrels

        return self.memo(("qrels", str(Path(path).resolve())), lambda: read_qrels(path))

    def queries(self, path: str) -> dict[str, str]:
        from kd.data import load_queries

        return self.memo(("q", str(Path(path).resolve())), lambda: load_queries(path))

    def passages(self, path: str, use_title: bool) -> dict[str, str]:
        from kd.data import load_passages

        def read() -> dict[str, str]:
            texts = load_passages(path, use_title=use_title, show_progress=self.cfg.show_progress)
            check_corpus(texts, path)
            return texts

        return self.memo(("p", str(Path(path).resolve()), use_title), read)

    def inputs(self, task) -> Any:
        """The task's inputs, read and checked on first use (kd/evaluation/inputs.py), then kept."""
        key = task.model_dump_json()
        if key not in self._inputs:
            self._inputs[key] = PREPARE[task.task](self, task)
        return self._inputs[key]

    def preflight(self) -> dict[str, Any]:
        """Read every task's inputs and check them (ids, overlaps, empty corpora) before any model work, so bad
        input fails in seconds with the file named. Returns the prepared inputs by task name; the tasks use them."""
        return {task.name: self.inputs(task) for task in self.cfg.tasks}

    # ----------------------------------------------------------------------------------------------- models
    def load(self, spec) -> Ranker:
        return load_spec(spec.model_dump(), self.resolve_uri, self.device)

    def precision_info(self, device=None) -> dict[str, Any]:
        return resolve_precision(self.cfg.compute.precision, device if device is not None else self.device).as_info()

    def write(self, result: TaskResult, run: Run | None, top_k: int | None = None) -> TaskResult:
        """<output_dir>/<model or _runs>/<dataset>.trec (the run, when there is one) and .json (the result)."""
        from kd.data import write_trec_run

        folder = self.out / (result.model or "_runs")
        stem = result.dataset
        if run is not None:
            path = folder / f"{stem}.trec"
            write_trec_run(path, run, tag=_tag(result.model or result.dataset), k=top_k)
            result.files["run"] = str(path)
        result.files["json"] = str(folder / f"{stem}.json")
        write_json(result.files["json"], result.to_dict())
        return result

    def corpus_embeddings(self, spec, model: Ranker, folder: str, docids: list[str], texts: list[str],
                          use_title: bool) -> ShardSet:
        """The document encoder's embeddings of a corpus, written by `corpus_encoder` as shards into
        <output_dir>/_embeddings/<digest of encoder and corpus>/ (kd/evaluation/shards.py) and checked; the last
        corpus's shards are kept (on disk) for the next query encoder, the ones before removed (`drop_embeddings`)."""
        dspec = doc_encoder_spec(spec.model_dump())
        key = json.dumps({"spec": {k: v for k, v in dspec.items() if k != "name"}, "corpus": folder,
                          "use_title": use_title, "n": len(docids), "batch": self.cfg.compute.batch_size},
                         sort_keys=True, default=str)
        if key in self._doc_emb:
            return self._doc_emb[key]
        self.drop_embeddings()
        out = reset_folder(self.out / "_embeddings" / hashlib.sha256(key.encode()).hexdigest()[:16])
        self.corpus_encoder(dspec, model if not spec.doc_path else None, docids, texts, out)
        self._doc_emb = {key: ShardSet.open(out, len(docids))}  # keep one corpus
        return self._doc_emb[key]

    def drop_embeddings(self) -> None:
        """Remove the kept corpus shards from disk (run_all does at the end: N x d x 4 bytes, 7 GiB at 5 M x 384)."""
        for shards in self._doc_emb.values():
            shutil.rmtree(shards.folder, ignore_errors=True)
        self._doc_emb = {}
        if (self.out / "_embeddings").is_dir() and not any((self.out / "_embeddings").iterdir()):
            (self.out / "_embeddings").rmdir()

    # ----------------------------------------------------------------------------------------------- tasks
    def run_baseline(self, task) -> TaskResult:
        """`run` task: evaluate a TREC run file as it is."""
        return baseline_task(self, task, self.inputs(task))

    def dense(self, task, spec, model: Ranker) -> TaskResult:
        return dense_task(self, task, spec, model, self.inputs(task))

    def rerank(self, task, spec, model: Ranker) -> TaskResult:
        return rerank_task(self, task, spec, model, self.inputs(task))

    def document(self, task, spec, model: Ranker) -> list[TaskResult]:
        return document_task(self, task, spec, model, self.inputs(task))

    def efficiency(self, task, spec, model: Ranker) -> TaskResult:
        return efficiency_task(self, task, spec, model, self.inputs(task))

    def run_task(self, task, spec, model: Ranker | None = None) -> list[TaskResult]:
        """Run one task for one model spec (the model is loaded unless given)."""
        if task.task == "run":
            return [self.run_baseline(task)]
        model = model if model is not None else self.load(spec)
        fn = {"dense": self.dense, "rerank": self.rerank, "document": self.document,
              "efficiency": self.efficiency}[task.task]
        out = fn(task, spec, model)
        return out if isinstance(out, list) else [out]


def _tag(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.:" else "_" for c in name) or "kd"


def run_all(cfg, runner: TaskRunner | None = None,
            on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Every task for every model, in-process (models loaded one at a time); `run` tasks once. Returns the
    results, also written to <output_dir>/results.json — rewritten after each result (once `on_result`, the MLflow
    logging, is done with it), so a job that fails in a later task keeps what it finished, and a rerun reuses the
    results whose `result_key` still matches (marked `reused`; delete results.json to recompute them)."""
    runner = runner or TaskRunner(cfg)
    results: list[TaskResult] = []
    path = Path(cfg.output_dir) / "results.json"
    earlier = _earlier_results(path)

    def emit(rs: list[TaskResult], key: str | None) -> None:
        for r in rs:
            r.key = key
            results.append(r)
            if on_result is not None:
                on_result(r)
            write_json(path, [r.to_dict() for r in results])

    def reusable(task, spec=None) -> tuple[str | None, list[TaskResult] | None]:
        key = result_key(cfg, task, spec)
        rs = earlier.get(key or "")
        if rs and len(rs) == (len(task.aggregations) if task.task == "document" else 1):
            logger.info("%s / %s: reusing the result of an earlier run (%s)", spec.name if spec else "baseline",
                        task.name, path)
            return key, rs
        return key, None

    for task in cfg.tasks:
        if task.task == "run":
            key, rs = reusable(task)
            emit(rs or [runner.run_baseline(task)], key)
    # efficiency first: the model's speed can then be reported beside each of its effectiveness results
    model_tasks = sorted((t for t in cfg.tasks if t.task != "run"), key=lambda t: t.task != "efficiency")
    for spec in cfg.models if model_tasks else []:
        model = None  # loaded for the first task that has no reusable result
        for task in model_tasks:
            key, rs = reusable(task, spec)
            if rs is None:
                model = model if model is not None else runner.load(spec)
                rs = runner.run_task(task, spec, model)
            emit(rs, key)
        del model
    runner.drop_embeddings()
    write_json(Path(cfg.output_dir) / "results.json", [r.to_dict() for r in results])  # also when there is none
    return results
