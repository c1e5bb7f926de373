"""jobs/pipeline.py without Ray: the composed config is validated whole (errors name the pipeline field), the plan,
the skip rule, the summary table, and the quickstart's shipped data (small, real, self-consistent, reproducible).

The pipeline itself runs end to end in tests/test_job_submit.py (under `ray job submit`) and as the README's main
command (`python -m jobs.quickstart`, the first step of .ci/run)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kd.config import ConfigError, load_config
from kd.pipeline_config import PipelineConfig, resources_dir

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SMOKE = REPO / "configs" / "smoke.yaml"
DATA = resources_dir() / "quickstart"


def _load(path=QUICKSTART, overrides=()):
    return load_config(PipelineConfig, path, list(overrides))


def test_quickstart_and_smoke_configs_validate_without_torch_or_ray():
    code = ("import sys, time; t = time.perf_counter(); from kd.config import load_config; "
            "from kd.pipeline_config import PipelineConfig; "
            f"[load_config(PipelineConfig, p) for p in ({str(QUICKSTART)!r}, {str(SMOKE)!r})]; "
            "print('torch' in sys.modules, 'ray' in sys.modules, 'mlflow' in sys.modules, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    torch, ray, mlflow, seconds = out.split()
    assert (torch, ray, mlflow) == ("False", "False", "False")
    assert float(seconds) < 2.0


def test_quickstart_config_is_packaged_identically():
    from kd.quickstart import config_path

    packaged = DATA / "quickstart.yaml"
    assert packaged.read_text() == QUICKSTART.read_text(), "keep kd/resources/quickstart/quickstart.yaml a copy"
    assert config_path() == QUICKSTART


def test_kd_resources_expands_and_the_composed_configs_are_complete():
    cfg = _load()
    assert cfg.data.passages == str(DATA / "scifact" / "corpus.jsonl.gz")
    t = cfg.teacher_config(0, triples=str(DATA / "scifact" / "qrels" / "train.tsv"))
    assert t.mode == "supervised" and t.student.architecture == "bert_cat" and t.loss.name == "ranknet"
    assert t.validation.qrels.endswith("dev.tsv") and t.data.passages == cfg.data.passages
    assert t.run.name == "quickstart-teacher-bert-cat" and t.mlflow.run_name == "quickstart/teacher-bert-cat"
    s = cfg.student_config(0, scores=str(DATA / "scifact" / "qrels" / "train.tsv"))
    assert s.mode == "score_file" and s.teacher.scores.endswith("train.tsv") and s.registry.name
    again = PipelineConfig.model_validate(cfg.model_dump())  # as the runtime re-validates it: same composition
    assert again.student_config(0, scores=str(QUICKSTART)).validation == s.validation
    e = cfg.eval_config(teachers=cfg.ensemble(), students={"bert-dot": str(DATA)})
    assert [m.name for m in e.models] == ["teacher-bert-cat", "student-bert-dot"]
    assert e.output_dir.endswith("eval") and e.mlflow.experiment == cfg.mlflow.experiment


@pytest.mark.parametrize("override, message", [
    ("students.0.loss.name=nope", r"field students\.0\.loss\.name: unknown loss 'nope'"),
    ("students.0.training.lr=-1", r"field students\.0\.training\.lr: Input should be greater than 0"),
    ("students.0.trainin.lr=1", r"field students\.0\.trainin: Extra inputs are not permitted"),
    ("teachers.train.0.student.architecture=bert_kat", r"field teachers\.train\.0\.student\.architecture: unknown"),
    ("evaluate.tasks.1.top_k=0", r"field evaluate\.tasks\.1\.rerank\.top_k: Input should be greater than or equal"),
    ("mine.run=missing.trec", r"field mine\.run: file not found: missing.trec"),
    ("triples=" + str(QUICKSTART), r"field mine: give either `mine`"),
    ("register.select_by=nope", r"field register\.select_by: expected '<dataset>:<metric>'"),
    ("students.0.registry.name=null", r"field students\.0\.registry\.name: the register stage needs"),
    ("validation.run=nowhere.trec", r"field (teachers\.train\.0|students\.0)\.validation\.run: file not found"),
])
def test_errors_name_the_pipeline_field(override, message):
    with pytest.raises(ConfigError, match=message):
        _load(overrides=[override])


def test_a_given_teacher_file_skips_mining_teachers_and_scoring(tmp_path):
    from kd.runtime.pipeline import Pipeline

    scores = tmp_path / "t2.tsv"
    scores.write_text("1.0\t0.5\t1\t2\t3\n")
    cfg = _load(overrides=["mine=null", "teachers.train=[]", f"teacher_scores={scores}", "evaluate.teachers=false",
                           f"output_dir={tmp_path / 'out'}", "mlflow.enabled=false"])
    assert [s.name for s in Pipeline(cfg).plan()] == ["student-bert-dot", "evaluate", "register"]
    assert cfg.scores_file() == str(scores) and cfg.student_config(0, scores=cfg.scores_file()).teacher.scores == str(scores)
    with pytest.raises(ConfigError, match=r"field teachers: not used with a given teacher_scores file"):
        _load(overrides=["mine=null", f"teacher_scores={scores}"])


def test_plan_order_and_the_skip_rule(tmp_path):
    from kd.runtime.pipeline import Pipeline

    cfg = _load(overrides=[f"output_dir={tmp_path}", "mlflow.enabled=false"])
    p = Pipeline(cfg)
    stages = p.plan()
    assert [s.name for s in stages] == ["mine", "teacher-bert-cat", "score", "student-bert-dot", "evaluate",
                                        "register"]
    assert [s.needs_ray for s in stages] == [False, True, True, True, False, False]
    mine = stages[0]
    assert not p.done(mine)
    p.marker("mine").parent.mkdir(parents=True)
    p.marker("mine").write_text("{}")
    assert not p.done(mine), "a marker without the output is not done"
    mine.output.parent.mkdir(parents=True)
    mine.output.write_text("1\t2\t3\n")
    assert p.done(mine)


def test_resume_prints_skipped_and_runs_nothing(tmp_path, capsys):
    """Every stage complete: the pipeline skips them all (no Ray started) and still prints the summary."""
    from kd.runtime.pipeline import Pipeline

    cfg = _load(overrides=[f"output_dir={tmp_path}", "mlflow.enabled=false"])
    p = Pipeline(cfg)
    for stage in p.plan():
        stage.output.parent.mkdir(parents=True, exist_ok=True)
        if not stage.output.exists():
            stage.output.mkdir() if stage.name.startswith(("teacher", "student")) else stage.output.write_text("{}")
        body = {"model_uri": "models:/kd-quickstart@current"} if stage.name == "register" else {}
        if stage.name == "evaluate":
            body = {"results": _rows()}
        p.marker(stage.name).parent.mkdir(parents=True, exist_ok=True)
        p.marker(stage.name).write_text(json.dumps(body))
    out = p.run()
    printed = capsys.readouterr().out
    assert printed.count("skipped (output exists: ") == 6 and not p.ray_started
    assert out["model_uri"] == "models:/kd-quickstart@current"
    assert "mlflow ui --backend-store-uri sqlite:///" in printed and "registered model: models:/kd-quickstart" in printed


def _rows() -> list[dict]:
    def r(model, task, dataset, metrics, arch=None):
        return {"model": model, "task": task, "dataset": dataset, "metrics": metrics,
                "info": {"architecture": arch} if arch else {}, "files": {}}

    return [
        r(None, "run", "scifact-bm25", {"ndcg@10": 0.70}), r(None, "run", "dl19-bm25", {"ndcg@10": 0.5058}),
        r("teacher-bert-cat", "efficiency", "efficiency", {"eff_rerank_bs1_qps": 0.2, "eff_rerank_bs64_qps": 0.5},
          "bert_cat"),
        r("teacher-bert-cat", "rerank", "scifact-test", {"ndcg@10": 0.60}, "bert_cat"),
        r("teacher-bert-cat", "rerank", "dl19", {"ndcg@10": 0.40}, "bert_cat"),
        r("student-bert-dot", "efficiency", "efficiency", {"eff_rerank_bs64_qps": 0.9, "eff_query_encode_bs1_qps": 100.0},
          "bert_dot"),
        r("student-bert-dot", "rerank", "scifact-test", {"ndcg@10": 0.65}, "bert_dot"),
        r("student-bert-dot", "rerank", "dl19", {"ndcg@10": 0.64}, "bert_dot"),
    ]


def test_summary_table_puts_bm25_teacher_and_student_side_by_side():
    from kd.runtime.pipeline import format_summary

    table = format_summary(_load(), _rows())
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["model", "arch", "nDCG@10", "scifact-test"]
    bm25 = next(line for line in lines if line.startswith("BM25"))
    assert "0.7000" in bm25 and "0.5058" in bm25  # baselines sit in the columns of the runs they re-rank
    student = next(line for line in lines if line.startswith("student-bert-dot"))
    assert "0.6500" in student and "0.6400" in student and "0.9 (bs64)" in student and "100 (bs1)" in student
    teacher = next(line for line in lines if line.startswith("teacher-bert-cat"))
    assert "0.5 (bs64)" in teacher and teacher.rstrip().endswith("-")  # no query-encoding speed for a cross-encoder


# ---------------------------------------------------------------------------------------------- shipped data
def test_shipped_quickstart_data_is_small_and_consistent():
    from kd.data import load_passages, load_queries, read_qrels, read_trec_run

    files = [p for p in DATA.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    total = sum(p.stat().st_size for p in files)
    assert total < 4_000_000, f"shipped data is {total / 1e6:.1f} MB"
    sci = DATA / "scifact"
    queries = load_queries(sci / "queries.jsonl")
    corpus = load_passages(sci / "corpus.jsonl.gz", show_progress=False)
    qrels = {s: read_qrels(sci / "qrels" / f"{s}.tsv") for s in ("train", "dev", "test")}
    assert not set(qrels["train"]) & set(qrels["dev"]) and not set(qrels["test"]) & (set(qrels["train"]) |
                                                                                       set(qrels["dev"]))
    for split, q in qrels.items():
        run = read_trec_run(sci / "runs" / f"bm25.{split}.trec")
        assert set(run) <= set(q) and set(q) <= set(queries), split
        assert all(d in corpus for docs in run.values() for d in docs), f"{split}: a candidate without text"
        assert all(d in corpus for docs in q.values() for d in docs), f"{split}: a judged abstract without text"
    dl = DATA / "dl19"
    run = read_trec_run(dl / "runs" / "BM25.top100.trec")
    passages = load_passages(dl / "corpus.jsonl.gz", show_progress=False)
    assert len(run) == 43 and all(len(v) == 100 for v in run.values())
    assert {d for v in run.values() for d in v} == set(passages)
    assert set(run) <= set(load_queries(dl / "queries.jsonl")) and set(run) <= set(read_qrels(dl / "qrels" /
                                                                                               "test.tsv"))


def test_shipped_dl19_bm25_matches_the_reference(shared_data):
    from kd.data import read_qrels, read_trec_run
    from kd.metrics import evaluate

    res = evaluate(read_trec_run(DATA / "dl19" / "runs" / "BM25.top100.trec"),
                   read_qrels(DATA / "dl19" / "qrels" / "test.tsv"), metrics=("ndcg@10",), relevance_level=2)
    assert abs(res["ndcg@10"] - 0.5058) < 5e-4


def test_build_script_reproduces_the_shipped_files(tmp_path, shared_data):
    proc = subprocess.run([sys.executable, str(DATA / "build.py"), "--data", str(shared_data), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in built:
        assert (DATA / rel).read_bytes() == (tmp_path / rel).read_bytes(), f"{rel} differs from a fresh build"


def test_ensure_ray_does_not_restate_the_submitted_jobs_env_vars(monkeypatch):
    """Under `ray job submit --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": ...}}'` the driver sees that
    variable too; handing it to ray.init again would make Ray refuse to merge the two runtime envs."""
    from kd.runtime.cluster import forwarded_env

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert forwarded_env()["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}, "metadata": {}}))
    env = forwarded_env()
    assert "MLFLOW_TRACKING_URI" not in env and env["HF_HUB_OFFLINE"] == "1"
