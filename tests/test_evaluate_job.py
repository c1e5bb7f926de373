"""jobs/evaluate.py end to end: Ray Data corpus encoding (1 vs 2 actors), DL'19 re-ranking, MLflow runs, the plot.

The full-corpus SciFact acceptance run (5,183 abstracts, twice) takes tens of minutes on a 2-core machine: it runs
when KD_EVAL_FULL=1; by default the 1-vs-2-actor identity is checked on a SciFact subset (all 300 test claims).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DL19 = DATA / "trec-dl-2019"
pytestmark = pytest.mark.slow


def _job(config: Path, *overrides: str, timeout: int = 3000,
         flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jobs.evaluate", "--config", str(config), *flags]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def _scifact_subset(root: Path, n_other: int) -> Path:
    """All SciFact test claims and judged abstracts, plus the first `n_other` other abstracts."""
    from kd.data import load_beir

    src = load_beir(DATA / "beir" / "scifact", "test")
    rel = sorted({d for q in src.qrels.values() for d in q})
    keep = rel + [d for d in src.corpus if d not in set(rel)][:n_other]
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for d in keep:
            f.write(json.dumps({"_id": d, **src.corpus[d]}) + "\n")
    (root / "queries.jsonl").write_bytes((DATA / "beir" / "scifact" / "queries.jsonl").read_bytes())
    (root / "qrels" / "test.tsv").write_bytes((DATA / "beir" / "scifact" / "qrels" / "test.tsv").read_bytes())
    return root


def _actors(n: int) -> list[str]:
    # 2 CPUs: each actor takes half a CPU and one torch thread, leaving a CPU for Ray Data's own tasks
    return ["compute.backend=ray", f"compute.num_actors={n}", "compute.cpus_per_actor=0.5",
            "compute.threads_per_actor=1", "compute.batches_per_call=2", "compute.precision=fp32"]


@pytest.mark.skipif(os.environ.get("KD_EVAL_FULL") == "1", reason="the full-corpus test covers it")
def test_dense_on_ray_1_vs_2_actors_identical(tmp_path, shared_data):
    beir = _scifact_subset(tmp_path / "scifact", n_other=160)
    db = f"sqlite:///{tmp_path}/mlflow.db"
    runs = {}
    for n in (1, 2):
        proc = _job(REPO / "configs" / "eval_scifact_dense.yaml", f"tasks.0.beir={beir}",
                    f"output_dir={tmp_path / f'out{n}'}", f"mlflow.tracking_uri={db}", "mlflow.experiment=dense-test",
                    f"mlflow.run_name=actors{n}", *_actors(n), f"compute.shard_size={10_000 if n == 1 else 100}",
                    flags=("--verbose",) if n == 2 else ())
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "Started a local Ray instance" in proc.stderr and f"on {n} actor(s)" in proc.stderr
        # one calm progress line; Ray Data's own progress block (stderr is not a terminal) only with --verbose
        assert "encoding corpus (minilm-l6): " in proc.stderr and " docs (100%)" in proc.stderr
        assert ("======= Running Dataset" in proc.stderr) == (n == 2)
        assert "scifact  dense" in proc.stdout  # the printed table
        (res,) = json.loads((tmp_path / f"out{n}" / "results.json").read_text())
        runs[n] = res
        assert res["info"]["n_queries"] == 300 and res["info"]["encoder_backend"] == "ray"
        # the actors wrote the embeddings as pieces (2 batches of 64 each), searched as 1 or several shards, removed
        # at the end of the job
        assert res["info"]["pieces"] == -(-res["info"]["n_docs"] // 128)
        assert res["info"]["shards"] == -(-res["info"]["n_docs"] // (10_000 if n == 1 else 100))
        assert not (tmp_path / f"out{n}" / "_embeddings").exists()
    assert runs[1]["metrics"] == runs[2]["metrics"]
    assert runs[1]["metrics"]["ndcg@10"] > 0.7  # a 500-document corpus: easier than the full one
    assert Path(runs[1]["files"]["run"]).read_bytes() == Path(runs[2]["files"]["run"]).read_bytes()

    import mlflow

    mlflow.set_tracking_uri(db)
    found = mlflow.search_runs(experiment_names=["dense-test"], output_format="list")
    assert sorted(r.info.run_name for r in found) == ["actors1/minilm-l6/scifact", "actors2/minilm-l6/scifact"]
    for r in found:
        assert r.data.tags["kd.task"] == "dense" and r.data.tags["kd.dataset"] == "scifact"
        assert r.data.metrics["ndcg_at_10"] == pytest.approx(runs[1]["metrics"]["ndcg@10"])
        assert r.data.params["compute.num_actors"] in ("1", "2")


@pytest.mark.skipif(os.environ.get("KD_EVAL_FULL") != "1", reason="full SciFact corpus twice: set KD_EVAL_FULL=1")
def test_scifact_full_corpus_dense_1_vs_2_actors(tmp_path, shared_data):
    results = {}
    for n in (1, 2):
        proc = _job(REPO / "configs" / "eval_scifact_dense.yaml", f"output_dir={tmp_path / f'out{n}'}",
                    "mlflow.enabled=false", *_actors(n), timeout=6000)
        assert proc.returncode == 0, proc.stderr[-4000:]
        (res,) = json.loads((tmp_path / f"out{n}" / "results.json").read_text())
        results[n] = res
    assert results[1]["info"]["n_docs"] == 5183 and results[1]["info"]["n_queries"] == 300
    assert results[1]["metrics"]["ndcg@10"] == pytest.approx(0.645, abs=0.003)
    assert results[1]["metrics"] == results[2]["metrics"]
    assert Path(results[1]["files"]["run"]).read_bytes() == Path(results[2]["files"]["run"]).read_bytes()


def test_dl19_baseline_rerank_efficiency_mlflow_and_plot(tmp_path, shared_data):
    """BM25 = 0.5058; MiniLM re-ranking its top-100 = 0.642 ± 0.003; a 2-layer subset is faster; MLflow + PNG."""
    cfg = yaml.safe_load((REPO / "configs" / "eval_efficiency.yaml").read_text())
    cfg["models"] = [m for m in cfg["models"] if m["name"] in ("minilm-l6", "minilm-l2-top-bottom")]
    cfg["tasks"][0].update({"batch_sizes": [1, 4], "warmup": 1, "repeats": 3})
    cfg["tasks"].insert(0, {"task": "run", "name": "dl19-bm25", "run": str(DL19 / "runs" / "BM25.top100.trec"),
                            "qrels": str(DL19 / "qrels" / "test.tsv")})
    for t in cfg["tasks"]:
        for k in ("queries", "passages", "run", "corpus", "qrels"):
            if k in t and not Path(t[k]).is_absolute():
                t[k] = str((REPO / t[k]).resolve())
    cfg["output_dir"] = str(tmp_path / "out")
    cfg["show_progress"] = False
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "eff-test"}
    cfg["plot"].update({"output": str(tmp_path / "tradeoff.png"), "x_metric": "eff_rerank_bs4_qps"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _job(tmp_path / "config.yaml")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {(r["model"], r["dataset"]): r for r in json.loads((tmp_path / "out" / "results.json").read_text())}
    assert round(results[(None, "dl19-bm25")]["metrics"]["ndcg@10"], 4) == 0.5058
    six = results[("minilm-l6", "dl19")]
    assert six["metrics"]["ndcg@10"] == pytest.approx(0.642, abs=0.003)
    assert six["info"]["n_queries"] == 43 and six["info"]["pairs"] == 4300 and six["info"]["relevance_level"] == 2
    two = results[("minilm-l2-top-bottom", "dl19")]
    assert two["metrics"]["ndcg@10"] < six["metrics"]["ndcg@10"]
    e6, e2 = results[("minilm-l6", "efficiency")], results[("minilm-l2-top-bottom", "efficiency")]
    assert e6["info"]["num_layers"] == 6 and e2["info"]["num_layers"] == 2
    assert e2["metrics"]["eff_rerank_bs4_pairs_per_s"] > e6["metrics"]["eff_rerank_bs4_pairs_per_s"]
    for line in ("dl19-bm25", "minilm-l2-top-bottom  dl19"):
        assert line in proc.stdout
    # the TREC run written is the one evaluated
    from kd.data import read_qrels, read_trec_run
    from kd.metrics import evaluate

    again = evaluate(read_trec_run(six["files"]["run"]), read_qrels(DL19 / "qrels" / "test.tsv"), ("ndcg@10",), 2)
    assert again["ndcg@10"] == pytest.approx(six["metrics"]["ndcg@10"], abs=1e-9)

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    found = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["eff-test"], output_format="list")}
    assert set(found) == {"baseline/dl19-bm25", "minilm-l6/efficiency", "minilm-l6/dl19",
                          "minilm-l2-top-bottom/efficiency", "minilm-l2-top-bottom/dl19"}
    r = found["minilm-l6/dl19"]
    assert r.data.metrics["ndcg_at_10"] == pytest.approx(six["metrics"]["ndcg@10"])
    assert r.data.metrics["eff_query_encode_bs1_qps"] == pytest.approx(e6["metrics"]["eff_query_encode_bs1_qps"])
    assert r.data.tags["kd.model"] == "minilm-l6" and r.data.params["model.layers"] == "None"
    assert found["minilm-l2-top-bottom/dl19"].data.params["model.layers"] == "top-bottom"
    png = tmp_path / "tradeoff.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # the plot alone, from MLflow (no task), into another file
    proc = _job(tmp_path / "config.yaml", "tasks=[]", "models=[]", f"plot.output={tmp_path / 'again.png'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "again.png").stat().st_size > 10_000


def test_results_of_finished_tasks_are_on_disk_when_a_later_task_fails(tmp_path, shared_data, monkeypatch):
    """Two baseline tasks through the real jobs.evaluate entrypoint; the second fails after the first finished:
    results.json and the MLflow run already hold the first (they were written only at the very end before), and a
    rerun reuses it."""
    from jobs import evaluate as job
    from kd.evaluation import TaskRunner

    cfg = {"tasks": [{"task": "run", "name": name, "run": str(DL19 / "runs" / f"{name}.top100.trec"),
                      "qrels": str(DL19 / "qrels" / "test.tsv")} for name in ("BM25", "BM25_RM3")],
           "output_dir": str(tmp_path / "out"), "show_progress": False,
           "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "partial-test"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    real = TaskRunner.run_baseline

    def run_baseline(self, task):
        if task.name == "BM25_RM3":
            raise RuntimeError("the second task fails")
        return real(self, task)

    monkeypatch.setattr(TaskRunner, "run_baseline", run_baseline)
    with pytest.raises(RuntimeError, match="the second task fails"):
        job.main(["--config", str(tmp_path / "config.yaml")])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["dataset"], round(r["metrics"]["ndcg@10"], 4)) for r in results] == [("BM25", 0.5058)]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        runs = mlflow.search_runs(experiment_names=["partial-test"], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    assert [(r.info.run_name, r.info.status) for r in runs] == [("baseline/BM25", "FINISHED")]
    assert runs[0].data.metrics["ndcg_at_10"] == pytest.approx(results[0]["metrics"]["ndcg@10"])

    # the rerun reuses the finished task (not recomputed, not logged twice) and runs the other one
    ran = []
    monkeypatch.setattr(TaskRunner, "run_baseline", lambda self, task: ran.append(task.name) or real(self, task))
    assert job.main(["--config", str(tmp_path / "config.yaml")]) == 0
    assert ran == ["BM25_RM3"]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["dataset"] for r in results] == ["BM25", "BM25_RM3"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        runs = mlflow.search_runs(experiment_names=["partial-test"], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    assert sorted(r.info.run_name for r in runs) == ["baseline/BM25", "baseline/BM25_RM3"]
    # a changed input is evaluated again
    qrels = tmp_path / "qrels.tsv"
    qrels.write_bytes((DL19 / "qrels" / "test.tsv").read_bytes())
    monkeypatch.setattr(TaskRunner, "run_baseline", lambda self, task: ran.append(task.name) or real(self, task))
    assert job.main(["--config", str(tmp_path / "config.yaml"), "--set", "tasks.0.qrels=" + str(qrels)]) == 0
    assert ran == ["BM25_RM3", "BM25"]
