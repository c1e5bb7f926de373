"""`ray job submit` against a real Ray head (`ray start --head` on loopback) and a real `mlflow server`.

configs/smoke.yaml — every pipeline stage, tiny — is submitted exactly as an operator would
(`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m jobs.pipeline --config ...`),
must reach SUCCEEDED, and its registered model, stage runs and metrics are checked through the MLflow client. A
resubmission over the same outputs skips every stage; a job with a bad config FAILS fast with the field named in its
logs. Whenever a job does not end as expected, the assertion message carries `ray job logs`.
"""
from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@pytest.fixture(scope="module")
def head():
    from ray_head import RayHead

    with RayHead(num_cpus=2, dashboard=True) as h:
        yield h


def _ray(head, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["ray", "job", *args, "--address", head.dashboard_url], cwd=REPO, env=head.env(),
                          capture_output=True, text=True, timeout=timeout)


def submit(head, *entrypoint: str) -> str:
    job_id = f"kd-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        ["ray", "job", "submit", "--address", head.dashboard_url, "--submission-id", job_id, "--no-wait",
         "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--", *entrypoint],
        cwd=REPO, env=head.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ray job submit failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return job_id


def logs(head, job_id: str) -> str:
    proc = _ray(head, "logs", job_id)
    return proc.stdout + proc.stderr


def wait(head, job_id: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        proc = _ray(head, "status", job_id)
        out = proc.stdout + proc.stderr  # `ray job status` logs "Job 'id' succeeded|failed|was stopped" or the status
        for pattern, value in ((r"Job '[^']+' succeeded", "SUCCEEDED"), (r"Job '[^']+' failed", "FAILED"),
                               (r"Job '[^']+' was stopped", "STOPPED")):
            if re.search(pattern, out):
                status = value
        found = re.search(r"Status for job '[^']+': (?:JobStatus\.)?(\w+)", out)
        status = found.group(1) if found and status not in TERMINAL else status
        if status in TERMINAL:
            return status
        time.sleep(3)
    _ray(head, "stop", job_id)
    return f"TIMEOUT after {timeout:.0f} s (last: {status})"


def run_job(head, *entrypoint: str, expect: str = "SUCCEEDED", timeout: float = 600) -> str:
    job_id = submit(head, *entrypoint)
    status = wait(head, job_id, timeout)
    text = logs(head, job_id)
    assert status == expect, f"job {job_id} ended {status}, expected {expect}; `ray job logs`:\n{text[-12000:]}"
    return text


@pytest.fixture(scope="module")
def smoke(head, mlflow_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke-outputs")
    entry = ("python", "-m", "jobs.pipeline", "--config", "configs/smoke.yaml",
             "--set", f"mlflow.tracking_uri={mlflow_server.uri}", "--set", f"output_dir={out}")
    t0 = time.perf_counter()
    text = run_job(head, *entry, timeout=900)
    return {"out": out, "entry": entry, "logs": text, "seconds": time.perf_counter() - t0}


def test_submitted_pipeline_registers_a_model_with_metrics(smoke, mlflow_server):
    from mlflow import MlflowClient

    print(f"smoke pipeline under ray job submit: {smoke['seconds']:.0f} s")
    text = smoke["logs"]
    for stage in ("mine", "teacher-bert-cat", "score", "student-bert-dot", "evaluate", "register"):
        assert f" {stage}] running" in text and f" {stage}] done in" in text, f"stage {stage}:\n{text[-6000:]}"
    assert "registered model: models:/kd-smoke@current" in text
    assert "BM25 (first stage)" in text and "student-bert-dot" in text

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    version = client.get_model_version_by_alias("kd-smoke", "current")
    assert version.tags["pipeline"] == "smoke" and version.tags["student"] == "bert-dot"
    assert 0.0 <= float(version.tags["eval.dl19.ndcg_at_10"]) <= 1.0
    assert client.get_model_version_by_alias("smoke-bert-dot", "current").version  # the distill job's own entry

    exp = client.get_experiment_by_name("kd-smoke")
    parent = client.search_runs([exp.experiment_id], "tags.`kd.job` = 'pipeline'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    pid = parent[0].info.run_id
    assert parent[0].data.tags["kd.model_uri"] == "models:/kd-smoke@current"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{pid}'")
    stages = {r.data.tags.get("kd.stage") for r in children}
    assert stages == {"mine", "teacher-bert-cat", "score", "student-bert-dot", "evaluate", "register"}, stages
    by_stage = {r.data.tags["kd.stage"]: r for r in children}
    assert by_stage["mine"].data.metrics["triples"] > 0
    student = by_stage["student-bert-dot"]
    assert student.info.status == "FINISHED" and "loss" in student.data.metrics and "val_ndcg_at_10" in student.data.metrics
    assert by_stage["score"].data.metrics["triples"] > 0
    ev = by_stage["evaluate"]
    assert 0 <= ev.data.metrics["student-bert-dot.dl19.ndcg_at_10"] <= 1
    assert abs(ev.data.metrics["baseline.dl19-bm25.ndcg_at_10"] - 0.5058) < 5e-4
    nested = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{ev.info.run_id}'")
    assert {r.data.tags["kd.model"] for r in nested} >= {"teacher", "student-bert-dot"}


def test_resubmitting_skips_every_finished_stage(smoke, head, mlflow_server):
    from mlflow import MlflowClient

    before = MlflowClient(tracking_uri=mlflow_server.uri).get_model_version_by_alias("kd-smoke", "current").version
    text = run_job(head, *smoke["entry"], timeout=300)
    assert text.count("skipped (output exists: ") == 6, text[-6000:]
    assert "] running" not in text
    after = MlflowClient(tracking_uri=mlflow_server.uri).get_model_version_by_alias("kd-smoke", "current").version
    assert after == before, "a resumed pipeline must not register again"
    assert "registered model: models:/kd-smoke@current" in text


def test_a_failing_job_fails_with_its_logs(head, mlflow_server):
    text = run_job(head, "python", "-m", "jobs.pipeline", "--config", "configs/smoke.yaml",
                   "--set", "students.0.loss.name=nope", "--set", f"mlflow.tracking_uri={mlflow_server.uri}",
                   expect="FAILED", timeout=180)
    assert "field students.0.loss.name: unknown loss 'nope'" in text
