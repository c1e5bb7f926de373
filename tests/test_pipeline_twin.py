"""The no-KD twin, for real: jobs.pipeline trains a KD student (Margin-MSE) and its twin (RankNet) from the same
teacher-score file on a real Ray cluster; both report the same optimizer steps and training examples, and the
twin's weights differ from the KD student's (it really trained on another signal). Trained at the same time
(`nokd_twin_concurrent`, 1 CPU each on the 2-CPU cluster) both come out bit-identical to one after the other."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kd.configs.catalog import resources_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCIFACT = resources_dir() / "quickstart" / "scifact"


@pytest.fixture(scope="module")
def bm25_scores(tmp_path_factory) -> Path:
    """A real teacher file: shipped SciFact train triples scored by a BM25 member over the shipped corpus."""
    from kd.data import load_passages, load_queries, mine_triples, read_qrels, read_trec_run, write_teacher_scores
    from kd.teachers import BM25Member

    root = tmp_path_factory.mktemp("twin")
    mined = mine_triples(read_trec_run(SCIFACT / "runs" / "bm25.train.trec"), read_qrels(SCIFACT / "qrels" /
                         "train.tsv"), n_negatives=1, top_k=10, seed=0)
    triples = mined.triples[:40]
    queries = load_queries(SCIFACT / "queries.jsonl")
    passages = load_passages(SCIFACT / "corpus.jsonl.gz", show_progress=False)
    bm25 = BM25Member.from_corpus(SCIFACT / "corpus.jsonl.gz")
    q = [queries[t[0]] for t in triples]
    pos = bm25.predict(q, [passages[t[1]] for t in triples]).tolist()
    neg = bm25.predict(q, [passages[t[2]] for t in triples]).tolist()
    path = root / "teacher_scores.tsv"
    write_teacher_scores(path, [(a, b, *t) for a, b, t in zip(pos, neg, triples)])
    return path


def _train(tmp_path: Path, bm25_scores: Path, ray_head, concurrent: bool) -> tuple[Path, Path, str]:
    """jobs.pipeline on the KD student + twin config → (output folder, config file, the job's stdout)."""
    cfg = {
        "name": "twin", "output_dir": str(tmp_path / "out"), "mlflow": {"enabled": False},
        "data": {"queries": str(SCIFACT / "queries.jsonl"), "passages": str(SCIFACT / "corpus.jsonl.gz")},
        "teacher_scores": str(bm25_scores),
        "students": [{"name": "dot", "nokd_twin": True, "nokd_twin_concurrent": concurrent,
                      "student": {"architecture": "bert_dot", "init": {"num_layers": 1},
                                  "options": {"max_query_length": 24, "max_passage_length": 64}},
                      "loss": {"name": "margin_mse"}, "data": {"max_examples": 32},
                      "training": {"micro_batch_size": 8, "lr": 1.0e-4, "seed": 5, "cpus_per_worker": 1,
                                   "checkpoint_every": 100}}],
        "register": {"enabled": False},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "twin.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--config", str(path)], cwd=REPO,
                          env=ray_head.env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp_path / "out", path, proc.stdout


def test_kd_student_and_its_twin_train_alike_at_the_same_time_as_one_after_the_other(tmp_path, bm25_scores,
                                                                                       ray_head):
    from safetensors.torch import load_file

    from kd.configs.loader import load_config
    from kd.configs.pipeline import PipelineConfig
    from kd.training import check_examples

    out, path, printed = _train(tmp_path / "together", bm25_scores, ray_head, concurrent=True)
    assert "[1/2 student-dot] running (at the same time as student-dot-nokd)" in printed, printed[-3000:]
    assert "[2/2 student-dot-nokd] running (at the same time as student-dot)" in printed
    kd, twin = (json.loads((out / "stages" / f"student-{n}.json").read_text()) for n in ("dot", "dot-nokd"))
    assert (kd["loss"], twin["loss"], twin["nokd_twin"]) == ("margin_mse", "ranknet", True)
    assert kd["step"] == twin["step"] == 4  # 32 examples / micro-batch 8, one epoch
    pc = load_config(PipelineConfig, path)
    counts = [check_examples(pc.student_config(0, scores=str(bm25_scores), twin=t)) for t in (False, True)]
    assert counts[0] == counts[1] and counts[0]["examples"] == 32  # the same readers the workers use
    a, b = (load_file(str(out / "students" / n / "model.safetensors")) for n in ("dot", "dot-nokd"))
    assert a.keys() == b.keys() and any(not (a[k] == b[k]).all() for k in a), "the twin trained on the same signal"
    assert "registered_version" not in twin
    seq, _, printed = _train(tmp_path / "in-turn", bm25_scores, ray_head, concurrent=False)
    assert "at the same time" not in printed
    for n in ("dot", "dot-nokd"):
        x, y = (load_file(str(o / "students" / n / "model.safetensors")) for o in (out, seq))
        assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x), f"{n}: concurrency changed training"
