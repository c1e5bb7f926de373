"""kd.runtime.tracking and kd.runtime.progress: a tracking server that does not answer fails in seconds naming the
URI (through a real job entrypoint); runs end FINISHED / FAILED / KILLED and a rerun reuses its run (real sqlite
store); the calm progress line's format and throttling, and Ray Data's own progress output kept for --verbose."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ tracking server that hangs
@pytest.fixture
def eval_config(tmp_path) -> Path:
    """A tiny, valid jobs.evaluate config (one baseline `run` task on real files)."""
    (tmp_path / "run.trec").write_text("q1 Q0 d1 1 2.0 bm25\nq1 Q0 d2 2 1.0 bm25\n")
    (tmp_path / "qrels.tsv").write_text("q1 0 d1 2\n")
    cfg = {"tasks": [{"task": "run", "name": "tiny", "run": str(tmp_path / "run.trec"),
                      "qrels": str(tmp_path / "qrels.tsv")}],
           "output_dir": str(tmp_path / "out"), "mlflow": {"experiment": "unreachable"}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _evaluate_job(config: Path, *overrides: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "jobs.evaluate", "--config", str(config)]
    for o in overrides:
        cmd += ["--set", o]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    return proc, time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tracking_server_nobody_listens_fails_in_seconds_naming_the_uri(eval_config, tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    proc, seconds = _evaluate_job(eval_config, f"mlflow.tracking_uri={uri}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"the MLflow tracking server {uri} does not answer" in proc.stderr
    assert "mlflow.tracking_uri" in proc.stderr and "Traceback" not in proc.stderr
    assert seconds < 10
    assert not (tmp_path / "out" / "results.json").exists()  # failed before any evaluation


def test_tracking_server_that_accepts_but_never_answers_fails_in_seconds(eval_config, tmp_path):
    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever reads or replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}  # from the environment, as under `ray job submit`
        proc, seconds = _evaluate_job(eval_config, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"the MLflow tracking server {uri} does not answer" in proc.stderr and "$MLFLOW_TRACKING_URI" in proc.stderr
    assert seconds < 10
    assert not (tmp_path / "out" / "results.json").exists()


def test_tracking_check_skips_disabled_tracking_and_file_stores(tmp_path):
    from kd.configs.common import MLflowConfig
    from kd.runtime.tracking import check_tracking_server

    dead = f"http://127.0.0.1:{_free_port()}"
    check_tracking_server(MLflowConfig(enabled=False, tracking_uri=dead))  # nothing to reach
    check_tracking_server(MLflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))


# --------------------------------------------------------------------------------------- run status and reuse
@pytest.fixture
def sqlite_store(tmp_path):
    import mlflow

    from kd.configs.common import MLflowConfig

    cfg = MLflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="tracking-test")
    yield cfg
    mlflow.set_tracking_uri(None)  # do not leak a process-wide URI into later tests


def _runs(cfg):
    import mlflow

    return mlflow.search_runs(experiment_names=[cfg.experiment], output_format="list")


def test_mlflow_run_ends_failed_or_killed_when_the_body_raises(sqlite_store):
    from kd.runtime.tracking import mlflow_run

    with pytest.raises(ValueError):
        with mlflow_run(sqlite_store, "fails", tags={"kd.job": "t"}):
            raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt):
        with mlflow_run(sqlite_store, "interrupted", tags={"kd.job": "t"}):
            raise KeyboardInterrupt
    with mlflow_run(sqlite_store, "works", tags={"kd.job": "t"}):
        pass
    status = {r.info.run_name: r.info.status for r in _runs(sqlite_store)}
    assert status == {"fails": "FAILED", "interrupted": "KILLED", "works": "FINISHED"}


def test_mlflow_run_reuse_reopens_the_run_of_the_same_job_and_name(sqlite_store, caplog):
    import mlflow

    from kd.runtime.tracking import log_params, mlflow_run

    with pytest.raises(KeyboardInterrupt):
        with mlflow_run(sqlite_store, "it's a name", tags={"kd.job": "score_teachers"}, reuse=True):
            log_params({"a": 1, "b": 2})
            raise KeyboardInterrupt
    assert [r.info.status for r in _runs(sqlite_store)] == ["KILLED"]
    with caplog.at_level(logging.WARNING, logger="kd.runtime.tracking"):
        with mlflow_run(sqlite_store, "it's a name", tags={"kd.job": "score_teachers"}, reuse=True) as run:
            log_params({"a": 1, "b": 3, "c": 4})  # b changed: MLflow refuses to overwrite a param
            mlflow.log_metric("m", 1.0)
    runs = _runs(sqlite_store)
    assert len(runs) == 1 and runs[0].info.run_id == run.info.run_id and runs[0].info.status == "FINISHED"
    assert runs[0].data.params == {"a": "1", "b": "2", "c": "4"}
    assert "b ('2' → '3')" in caplog.text
    with mlflow_run(sqlite_store, "it's a name", tags={"kd.job": "other_job"}, reuse=True):
        pass  # another job's run of the same name is a run of its own
    assert len(_runs(sqlite_store)) == 2


# ---------------------------------------------------------------- one vocabulary: find, create, reopen, publish
def test_find_or_create_run_through_a_client_reopens_the_run_its_key_names(sqlite_store):
    """The pipeline's and the sweep's parent runs: a second start finds the first (RUNNING again, params kept),
    a run of another job under the same name is not it, and names with quotes match exactly."""
    from mlflow import MlflowClient

    from kd.runtime.tracking import Tag, find_or_create_run, find_run, use_experiment

    use_experiment(sqlite_store)
    client, exp = MlflowClient(), sqlite_store.experiment
    key = {Tag.PIPELINE: "it's p", Tag.JOB: "pipeline"}
    run, created = find_or_create_run(exp, key, "shown name", {Tag.DATASET: "d"},
                                      params={"a": 1, "none": None, "long": "x" * 7000}, client=client)
    assert created and run.info.run_name == "shown name"
    client.set_terminated(run.info.run_id, "KILLED")
    other, other_created = find_or_create_run(exp, {Tag.PIPELINE: "it's p", Tag.JOB: "sweep"}, "p", client=client)
    assert other_created and other.info.run_id != run.info.run_id
    again, created = find_or_create_run(exp, key, "shown name", params={"a": 2}, client=client)
    assert not created and again.info.run_id == run.info.run_id
    got = client.get_run(run.info.run_id)
    assert got.info.status == "RUNNING"
    assert got.data.params == {"a": "1", "none": "None", "long": "x" * 6000}  # logged once, at creation
    tags = got.data.tags
    assert (tags[Tag.PIPELINE], tags[Tag.JOB], tags[Tag.DATASET]) == ("it's p", "pipeline", "d")
    assert tags[Tag.GIT_COMMIT] not in ("", None)
    assert find_run(exp, {Tag.PIPELINE: "it's"}, client=client) is None  # exact values, not prefixes
    assert find_run("no-such-experiment", key, client=client) is None
    assert len(_runs(sqlite_store)) == 2


def test_find_or_create_run_without_a_client_is_the_active_run(sqlite_store):
    """jobs.distill's rank 0: a restarted worker group continues the run of its run.name as the active run."""
    import mlflow

    from kd.runtime.tracking import Tag, find_or_create_run, use_experiment

    use_experiment(sqlite_store)
    exp = sqlite_store.experiment
    run, created = find_or_create_run(exp, {Tag.RUN_NAME: "r"}, "shown", {Tag.JOB: "distill"}, params={"x": 1})
    assert created and mlflow.active_run().info.run_id == run.info.run_id
    mlflow.end_run("KILLED")
    again, created = find_or_create_run(exp, {Tag.RUN_NAME: "r"}, "shown", {Tag.JOB: "distill"}, params={"x": 2})
    assert not created and mlflow.active_run().info.run_id == again.info.run_id == run.info.run_id
    mlflow.end_run()
    [r] = _runs(sqlite_store)
    assert (r.info.run_name, r.info.status, r.data.params) == ("shown", "FINISHED", {"x": "1"})
    assert (r.data.tags[Tag.RUN_NAME], r.data.tags[Tag.JOB]) == ("r", "distill")


def test_log_params_into_a_given_run_batches_of_100_and_keeps_first_values(sqlite_store, caplog):
    from mlflow import MlflowClient

    from kd.runtime.tracking import create_run, log_params, use_experiment

    use_experiment(sqlite_store)
    client = MlflowClient()
    run = create_run(sqlite_store.experiment, "many", {}, client=client)
    log_params({f"p{i}": i for i in range(250)}, run.info.run_id, client)
    with caplog.at_level(logging.WARNING, logger="kd.runtime.tracking"):
        log_params({"p3": 3, "p4": "changed", "new": True}, run.info.run_id, client)
    params = client.get_run(run.info.run_id).data.params
    assert len(params) == 251 and params["p4"] == "4" and params["new"] == "True"
    assert "p4 ('4' → 'changed')" in caplog.text and "p3" not in caplog.text


def test_absolute_tracking_uri(tmp_path, monkeypatch):
    from kd.runtime.tracking import absolute_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert absolute_tracking_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert absolute_tracking_uri("./mlruns") == str(tmp_path.resolve() / "mlruns")
    for unchanged in ("http://127.0.0.1:5000", "databricks", "file:///x/mlruns", None, ""):
        assert absolute_tracking_uri(unchanged) == unchanged


def test_publish_version_tags_the_version_and_moves_the_alias(sqlite_store):
    """The registration step of jobs.distill, jobs.sweep and the pipeline's register stage (sqlite registry)."""
    from mlflow import MlflowClient

    from kd.runtime.registry import alias_version, publish_version
    from kd.runtime.tracking import create_run, use_experiment

    use_experiment(sqlite_store)
    client = MlflowClient()
    assert alias_version("kd-pub", "champion", client=client) is None  # no such model
    run = create_run(sqlite_store.experiment, "r", {}, client=client)
    client.create_registered_model("kd-pub")
    for _ in range(2):
        client.create_model_version("kd-pub", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    assert alias_version("kd-pub", "champion", client=client) is None  # no such alias
    assert publish_version("kd-pub", "1", "champion", {"metric": 0.5, "dataset": ""}, client=client) == \
        "models:/kd-pub@champion"
    assert alias_version("kd-pub", "champion", client=client) in ("1", 1)
    publish_version("kd-pub", "2", "champion", {"previous_champion_version": "1"}, client=client)
    now = client.get_model_version_by_alias("kd-pub", "champion")
    assert str(now.version) == "2" and now.tags == {"previous_champion_version": "1"}
    assert client.get_model_version("kd-pub", "1").tags == {"metric": "0.5", "dataset": ""}


def test_lookup_errors_from_a_sqlite_registry(sqlite_store, tmp_path):
    """resolve()'s messages name what was looked for and where (the real-server version: tests/test_registry.py)."""
    from mlflow import MlflowClient

    from kd.runtime.registry import RegistryError, resolve
    from kd.runtime.tracking import create_run, use_experiment

    use_experiment(sqlite_store)
    uri, client = sqlite_store.tracking_uri, MlflowClient()
    run = create_run(sqlite_store.experiment, "r", {}, client=client)
    client.create_registered_model("kd-look")
    client.create_model_version("kd-look", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("kd-look", "champion", "1")
    ref = resolve("models:/kd-look@champion", uri)
    assert (ref.kind, ref.name, ref.version, ref.alias, ref.aliases, ref.run_id) == (
        "registered", "kd-look", "1", "champion", ["champion"], run.info.run_id)
    assert resolve("models:/kd-look/latest", uri).version == "1"
    assert resolve(f"runs:/{run.info.run_id}/model", uri).kind == "run"
    with pytest.raises(RegistryError, match=r"no registered model named 'nope' \(looked up for models:/nope@x\) in "
                                            rf"the model registry at {uri}; registered models there: \['kd-look'\]"):
        resolve("models:/nope@x", uri)
    with pytest.raises(RegistryError, match=rf"'kd-look' has no alias 'x' .* at {uri}; its aliases: @champion → v1"):
        resolve("models:/kd-look@x", uri)
    with pytest.raises(RegistryError, match=rf"'kd-look' has no version 3 .* at {uri}; its versions: \[1\]"):
        resolve("models:/kd-look/3", uri)
    with pytest.raises(RegistryError, match=rf"run 'deadbeef' \(from runs:/deadbeef/m\) not found at .*{uri}"):
        resolve("runs:/deadbeef/m", uri)
    with pytest.raises(RegistryError, match=r"logged model 'm-0' \(from models:/m-0\) not found"):
        resolve("models:/m-0", uri)


def test_kd_registry_reexports_the_runtime_names_and_imports_no_mlflow():
    code = ("import sys, kd, kd.registry, kd.runtime.registry as r, kd.loaded as l; "
            "assert kd.load is r.load is kd.registry.load and kd.registry.resolve is r.resolve; "
            "assert kd.registry.LoadedRanker is l.LoadedRanker and kd.registry.NotADualEncoder is l.NotADualEncoder; "
            "ref = kd.registry.resolve('sentence-transformers/all-MiniLM-L6-v2'); "
            "print(ref.kind, [m for m in ('mlflow', 'torch', 'ray') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split(None, 1) == ["hub", "[]\n"]


# -------------------------------------------------------------------------------------------------- progress
class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_progress_line_format_and_throttling():
    from kd.progress import Progress, format_duration

    clock, lines = _Clock(), []
    p = Progress("teacher scoring", 10_000, unit="triples", done=2_000, every=20, clock=clock, log=lines.append)
    clock.t += 5
    p.update(100)
    assert lines == []  # nothing within the first 20 s
    clock.t += 15
    p.update(300)  # 400 rows in 20 s = 20/s; 7,600 left → 6m20s
    assert lines == ["teacher scoring: 2,400/10,000 triples (24%), 20 triples/s, ETA 6m20s"]
    for _ in range(10):  # many updates within one interval: still one line
        clock.t += 1
        p.update(10)
    assert len(lines) == 1
    clock.t += 10
    p.update(7_500)
    assert len(lines) == 1  # complete: the final line says it
    p.close()
    assert lines[-1] == "teacher scoring: 10,000/10,000 triples (100%), 200 triples/s in 40s"
    assert format_duration(45) == "45s" and format_duration(250) == "4m10s" and format_duration(7500) == "2h05m"
    quiet = []
    q = Progress("x", 5, enabled=False, clock=clock, log=quiet.append)
    clock.t += 60
    q.update(5)
    q.close()
    assert quiet == [] and q.done == 5


def test_in_process_rerank_and_encoding_report_calm_lines_not_bars(minilm_path, sample_rows, caplog, capsys):
    """Re-ranking (Ranker.predict) and local encoding (encode_texts), the evaluate stage's long steps, log the same
    calm line as Ray Data stages (they drew a tqdm bar, which off a terminal is a line per redraw)."""
    from kd.evaluation import encode_texts
    from kd.models import BertDot

    model = BertDot.from_backbone(minilm_path)
    capsys.readouterr()  # transformers' own weight-loading bar
    queries, passages = [r["query"] for r in sample_rows[:6]], [r["passage"] for r in sample_rows[:6]]
    with caplog.at_level(logging.INFO, logger="kd.progress"):
        model.predict(queries, passages, batch_size=2, show_progress=True)
        encode_texts(model, passages, kind="docs", batch_size=4, show_progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "kd.progress"]
    # a bi-encoder's predict encodes each distinct query and passage once: its line counts texts, not pairs
    assert any(m.startswith("encoding (bert_dot): ") and "texts (100%)" in m and " in " in m for m in lines), lines
    assert any(m.startswith("encoding docs: 6/6 texts (100%)") for m in lines), lines
    err = capsys.readouterr().err
    assert "it/s" not in err and "batch/s" not in err  # no tqdm bar


def test_ray_data_progress_bars_only_with_verbose():
    from ray.data import DataContext

    from kd.runtime.progress import quiet_ray_data, set_verbose

    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start
    try:
        set_verbose(False)
        quiet_ray_data()
        assert ctx.enable_progress_bars is False and ctx.print_on_execution_start is False
        set_verbose(True)
        quiet_ray_data()
        assert ctx.enable_progress_bars is True and ctx.print_on_execution_start is True
    finally:
        set_verbose(False)
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved


def test_job_entrypoint_sets_verbose(eval_config, monkeypatch):
    from jobs import evaluate as job
    from kd.runtime import progress

    seen = []
    monkeypatch.setattr("kd.runtime.evaluation.evaluate",
                        lambda cfg, on_result=None: seen.append(progress.is_verbose()) or [])
    assert job.main(["--config", str(eval_config), "--set", "mlflow.enabled=false", "--verbose"]) == 0
    assert job.main(["--config", str(eval_config), "--set", "mlflow.enabled=false"]) == 0
    assert seen == [True, False]


@pytest.mark.slow
def test_a_real_tracking_server_passes_the_check_and_a_rerun_reuses_its_run(mlflow_server):
    import mlflow

    from kd.configs.common import MLflowConfig
    from kd.runtime import tracking

    cfg = MLflowConfig(tracking_uri=mlflow_server.uri, experiment="tracking-server-test")
    tracking._answered.discard(mlflow_server.uri)
    start = time.perf_counter()
    tracking.check_tracking_server(cfg)
    assert time.perf_counter() - start < 5 and mlflow_server.uri in tracking._answered
    try:
        for _ in range(2):
            with tracking.mlflow_run(cfg, "it's reused", tags={"kd.job": "score_teachers"}, reuse=True):
                tracking.log_params({"x": 1})
        runs = mlflow.search_runs(experiment_names=[cfg.experiment], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    assert [(r.info.run_name, r.info.status) for r in runs] == [("it's reused", "FINISHED")]
