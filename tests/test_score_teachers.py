"""jobs/score_teachers.py end to end: SciFact train qrels + BM25 → mined triples → two-teacher ensemble on Ray Data."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from kd.data import bm25_beir, mine_triples, read_qrels, read_teacher_scores, write_triples
from kd.models import BertCat, HFCrossEncoder

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _job(config: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jobs.score_teachers", "--config", str(config)]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_data):
    """Mined triples (SciFact train qrels + BM25 run) and two different teacher folders."""
    root = tmp_path_factory.mktemp("score")
    scifact = shared_data / "beir" / "scifact"
    run = bm25_beir(scifact, split="train", top_k=100, show_progress=False)
    qrels = read_qrels(scifact / "qrels" / "train.tsv")
    mined = mine_triples(run, qrels, n_negatives=1, top_k=100, threshold=1, seed=13)
    assert len(mined.triples) > 700  # ~one per judged train pair
    write_triples(root / "triples.tsv", mined.triples[:10])
    torch.manual_seed(1)
    BertCat.from_backbone(max_passage_length=64).save_pretrained(root / "teacher_a")
    torch.manual_seed(2)
    HFCrossEncoder.from_backbone(max_length=96).save_pretrained(root / "teacher_b")  # 1-label HF head
    config = {
        "input": str(root / "triples.tsv"),
        "text": {"queries": str(scifact / "queries.jsonl"), "passages": str(scifact / "corpus.jsonl")},
        "teachers": [{"name": "a", "path": str(root / "teacher_a")}, {"name": "b", "path": str(root / "teacher_b")}],
        "output_dir": str(root / "out"),
        "batch_size": 8, "window": 8, "shard_size": 6, "show_progress": False,
        "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "experiment": "score-test"},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_ensemble_file_is_the_mean_of_members_and_reads_back(workdir):
    proc = _job(workdir / "config.yaml", "show_progress=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # stdout is not a terminal: one calm progress line, not Ray Data's progress block per shard (kept for --verbose)
    assert "teacher scoring: 10/10 triples (100%)" in proc.stderr
    assert "Running Dataset" not in proc.stderr + proc.stdout
    out = workdir / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["triples"] == 10 and summary["skipped"] == 0 and summary["shards"] == 2
    scores = read_teacher_scores(out / "teacher_scores.tsv", show_progress=False)  # the published-format reader
    members = pq.read_table(out / "members.parquet").to_pydict()
    assert len(scores) == 10
    triples = [line.split("\t") for line in (workdir / "triples.tsv").read_text().splitlines()]
    assert [str(q) for q in scores.qid] == [t[0] for t in triples]  # input order kept across shards
    for i in range(10):
        for side in ("pos", "neg"):
            each = [np.float64(members[f"{m}_{side}"][i]) for m in ("a", "b")]
            assert getattr(scores, f"{side}_score")[i] == (each[0] + each[1]) / 2  # exactly the mean, per line
    assert not np.allclose(members["a_pos"], members["b_pos"])  # two really different teachers

    # members agree with scoring the same pairs directly
    from kd.data import load_beir
    from kd.teachers import load_cross_encoder_teacher

    beir = load_beir(REPO.parent / "shared" / "data" / "beir" / "scifact", split=None)
    texts = beir.texts()
    q = [beir.queries[t[0]] for t in triples]
    direct = load_cross_encoder_teacher(workdir / "teacher_a").predict(q, [texts[t[1]] for t in triples])
    np.testing.assert_allclose(members["a_pos"], direct.numpy(), rtol=1e-5, atol=1e-5)

    # tracked in MLflow with counts and teacher identities
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["score-test"], output_format="list")
    assert len(runs) == 1
    assert runs[0].data.metrics["triples"] == 10 and runs[0].data.metrics["pairs_per_second"] > 0
    assert runs[0].data.tags["kd.teacher.a"].startswith("cross:")
    first_run = runs[0].info.run_id

    # rerun: every shard is reused, nothing rescored, identical output
    before = (out / "teacher_scores.tsv").read_bytes()
    (out / "shards" / "part-00001.tsv").unlink()  # as if the job died before the last shard
    again = _job(workdir / "config.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reused_from_shards"] == 6 and summary["scored_now"] == 4
    assert (out / "teacher_scores.tsv").read_bytes() == before
    # the rerun reopened the first MLflow run instead of starting a second one
    runs = mlflow.search_runs(experiment_names=["score-test"], output_format="list")
    assert [(r.info.run_id, r.info.status) for r in runs] == [(first_run, "FINISHED")]
    assert runs[0].data.metrics["scored_now"] == 4 and runs[0].data.params["show_progress"] == "True"


def test_bad_input_fails_before_ray_naming_file_and_line(workdir, tmp_path):
    bad = tmp_path / "triples.tsv"
    good = (workdir / "triples.tsv").read_text().splitlines()
    bad.write_text("\n".join(good[:3] + ["1\tno-such-doc\t31715818"] + good[3:]) + "\n")
    start = time.perf_counter()
    proc = _job(workdir / "config.yaml", f"input={bad}", f"output_dir={tmp_path / 'out'}")
    assert proc.returncode != 0
    assert f"{bad}, line 4" in proc.stderr and "unknown passage id" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr
    assert time.perf_counter() - start < 60

    # lenient mode counts the skip instead of failing — and says so
    proc = _job(workdir / "config.yaml", f"input={bad}", f"output_dir={tmp_path / 'out2'}", "strict=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert summary["skipped"] == 1 and summary["missing_passage"] == 1 and summary["triples"] == 10


def test_invalid_config_fails_fast_naming_the_field(workdir):
    start = time.perf_counter()
    proc = _job(workdir / "config.yaml", "teachers.0.path=./no/such/teacher")
    assert proc.returncode == 2 and "field teachers.0.path" in proc.stderr and "teacher folder not found" in proc.stderr
    proc = _job(workdir / "config.yaml", "batch_size=0")
    assert proc.returncode == 2 and "field batch_size" in proc.stderr
    proc = _job(workdir / "config.yaml", "input=./missing.tsv")
    assert proc.returncode == 2 and "field input" in proc.stderr and "missing.tsv" in proc.stderr
    assert time.perf_counter() - start < 30
