"""The efficient students (issue 15, item 3): configs/students/*.yaml validate as DistillConfigs, read a real teacher
file, build 2-layer students from all-MiniLM-L6-v2 (layers 0 and 5; TK: the word-piece embeddings + 2 layers of its
own); bench/students.py times them against the teacher ensemble and writes its JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "students").glob("*.yaml"))
QS = REPO / "kd" / "resources" / "quickstart"
ARCHS = {"bert_cat", "bert_dot", "colbert", "prettr", "tk"}


def _teacher_file(path: Path, n: int = 3) -> Path:
    """A real teacher file (pos<TAB>neg<TAB>qid<TAB>pos_pid<TAB>neg_pid) of n SciFact train triples: a relevant
    abstract and BM25's best non-relevant one, scored by the real BM25 teacher member of the quickstart."""
    from kd.data import load_passages, load_queries, read_qrels, read_trec_run
    from kd.teachers import BM25Member

    qrels = read_qrels(QS / "scifact" / "qrels" / "train.tsv")
    run = read_trec_run(QS / "scifact" / "runs" / "bm25.train.trec")
    queries = load_queries(QS / "scifact" / "queries.jsonl")
    passages = load_passages(QS / "scifact" / "corpus.jsonl.gz", show_progress=False)
    triples = []
    for qid in sorted(q for q in qrels if q in run)[:n]:
        pos = sorted(d for d, r in qrels[qid].items() if r > 0)[0]
        neg = next(d for d, _ in sorted(run[qid].items(), key=lambda x: -x[1]) if d not in qrels[qid])
        triples.append((qid, pos, neg))
    bm25 = BM25Member.from_corpus(QS / "scifact" / "corpus.jsonl.gz")
    qs = [queries[q] for q, _, _ in triples]
    s_pos = bm25.predict(qs, [passages[p] for _, p, _ in triples]).tolist()
    s_neg = bm25.predict(qs, [passages[n] for _, _, n in triples]).tolist()
    path.write_text("".join(f"{a!r}\t{b!r}\t{q}\t{p}\t{n}\n" for (q, p, n), a, b in zip(triples, s_pos, s_neg)))
    return path


def test_student_configs_validate_read_a_teacher_file_and_build_two_layer_students(tmp_path, monkeypatch,
                                                                                 minilm_path):
    from kd.configs.distill import DistillConfig
    from kd.configs.loader import load_config
    from kd.models import backbone as bb
    from kd.models.base import Ranker
    from kd.teachers import SCORES_FILE
    from kd.training import build_student, load_examples

    assert {p.stem for p in CONFIGS} == ARCHS
    scores = _teacher_file(tmp_path / "teacher_scores.tsv")
    monkeypatch.chdir(REPO)  # the shipped configs' paths are relative to the repository root
    quickstart_out = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())["output_dir"]
    source, _ = bb.load_encoder(minilm_path)
    source_layers = bb.layer_list(source)
    assert len(source_layers) == 6
    for path in CONFIGS:
        named = yaml.safe_load(path.read_text())["teacher"]["scores"]
        # the score file the quickstart writes: <output_dir>/scores/teacher_scores.tsv
        assert Path(named) == Path(quickstart_out) / "scores" / SCORES_FILE, path
        cfg = load_config(DistillConfig, path, [f"teacher.scores={scores}"])
        assert cfg.mode == "score_file" and cfg.loss.name == "margin_mse" and cfg.student.architecture == path.stem
        examples = load_examples(cfg)  # the file joins with the config's queries and passages
        assert len(examples) == 3 and examples.stats["skipped"] == 0 and (examples.t_pos != examples.t_neg).all()
        student = build_student(cfg, None).eval()
        assert isinstance(student, Ranker) and student.architecture == path.stem
        if path.stem == "tk":  # TK: the backbone's word-piece embeddings, 2 contextualisation layers of its own
            assert student.encoder is None and len(student.contextualizer.layers) == 2
            assert torch.equal(student.embeddings.weight, bb.word_embeddings(source).weight)
        else:  # layers 0 and 5 of all-MiniLM-L6-v2 (top-bottom), in that order
            kept = bb.layer_list(student.encoder)
            assert len(kept) == 2, path
            for mine, theirs in zip(kept, (source_layers[0], source_layers[5])):
                a, b = mine.state_dict(), theirs.state_dict()
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path
            query = "attention.self.query.weight"
            assert not torch.equal(kept[1].state_dict()[query], source_layers[1].state_dict()[query])
        if path.stem == "prettr":
            assert student.options["split_layer"] == 1
        scored = student.predict(examples.query, examples.pos)  # real SciFact claims and abstracts
        assert scored.shape == (3,) and torch.isfinite(scored).all()


def test_student_config_with_an_absent_teacher_file_names_the_field(monkeypatch):
    from kd.configs.errors import ConfigError
    from kd.configs.distill import DistillConfig
    from kd.configs.loader import load_config

    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=r"field teacher\.scores: file not found: \./no/such/teacher_scores\.tsv"):
        load_config(DistillConfig, CONFIGS[0], ["teacher.scores=./no/such/teacher_scores.tsv"])


@pytest.mark.slow
def test_bench_students_times_every_student_against_the_teacher(tmp_path):
    out = tmp_path / "students.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "students.py"), "--queries", "1", "--repeats", "1",
                           "--max-extra-repeats", "0", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r) >= {"created", "machine", "precision", "inputs", "path", "note", "models", "targets", "checks",
                      "all_pass", "contended", "seconds"}
    assert r["precision"] == "fp32" and r["inputs"]["queries"] == 1 and r["inputs"]["pairs"] == 100
    assert r["machine"]["cpu_model"] and isinstance(r["machine"]["cpu_flags"], list)
    assert set(r["models"]) == {"teacher"} | ARCHS
    t = r["models"]["teacher"]
    assert t["architecture"] == "ensemble" and t["members"] == ["bm25", "minilm"] and t["num_layers"] == 6
    assert t["combination"] == "zscore" and t["combination_fit"]["pairs"] == 100
    for arch in ARCHS:
        m = r["models"][arch]
        assert m["architecture"] == arch and m["queries_per_s_best"] > 0 and len(m["runs"]) == 1
        assert m["runs"][0]["other_processes_cpu_share"] is not None
        assert m["parameters"] < t["parameters"]
        assert (m["own_layers"] if arch == "tk" else m["num_layers"]) == 2
        assert m["backbone_layers_kept"] == (None if arch == "tk" else [0, 5])
        sp = m["speedup_vs_teacher"]
        assert sp["best"] == pytest.approx(m["queries_per_s_best"] / t["queries_per_s_best"])
        assert r["checks"][f"{arch}_speedup_vs_teacher"]["target"] == 2.0
    assert f"wrote {out}" in proc.stdout
