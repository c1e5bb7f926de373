"""The `kd` command on local kd folders (registry URIs: tests/test_registry.py): rerank a TREC run, rank passages
for a query, encode with BERT_DOT / ColBERT, clear errors for cross-encoders and bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from kd.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, minilm_path):
    from kd.init import layer_subset_student
    from kd.models import BertCat, BertDot, ColBERT

    root = tmp_path_factory.mktemp("cli-models")
    torch.manual_seed(0)
    layer_subset_student(BertDot.from_backbone(minilm_path, pooling="mean", max_passage_length=64), "top-bottom",
                         2).save_pretrained(root / "dot")
    layer_subset_student(BertCat.from_backbone(minilm_path, max_passage_length=64), "bottom", 2).save_pretrained(
        root / "cat")
    layer_subset_student(ColBERT.from_backbone(minilm_path, max_passage_length=64), "bottom", 1).save_pretrained(
        root / "colbert")
    return root


def test_rerank_a_trec_run(folders, shared_data, tmp_path, capsys):
    from kd.data import load_passages, load_queries, ranked, read_trec_run
    from kd.models import Ranker

    dl19 = shared_data / "trec-dl-2019"
    run = read_trec_run(dl19 / "runs" / "BM25.top100.trec")
    qids = sorted(run)[:2]
    out = tmp_path / "reranked.trec"
    args = ["rerank", "--model", str(folders / "cat"), "--run", str(dl19 / "runs" / "BM25.top100.trec"),
            "--queries", str(dl19 / "queries.jsonl"), "--corpus", str(dl19 / "corpus.jsonl"), "--top-k", "5",
            "--output", str(out), "--tag", "kd-cat"]
    for qid in qids:
        args += ["--query-id", qid]
    assert main(args) == 0
    got = read_trec_run(out)
    assert sorted(got) == qids and all(len(got[q]) == 5 for q in qids)
    assert out.read_text().split("\n")[0].endswith(" kd-cat")
    model = Ranker.from_pretrained(folders / "cat")
    queries, corpus = load_queries(dl19 / "queries.jsonl"), load_passages(dl19 / "corpus.jsonl", show_progress=False)
    for qid in qids:
        docs = [d for d, _ in ranked(run[qid], 5)]
        expected = model.predict([queries[qid]] * 5, [corpus[d] for d in docs]).tolist()
        assert [got[qid][d] for d in docs] == pytest.approx(expected, abs=1e-6)


def test_rank_passages_for_one_query(folders, sample_rows, tmp_path, capsys):
    from kd.models import Ranker

    q = sample_rows[0]["query"]
    passages = [r["passage"] for r in sample_rows[:4]]
    (tmp_path / "p.txt").write_text("".join(p.replace("\n", " ") + "\n" for p in passages[:3]))
    assert main(["rerank", "--model", str(folders / "dot"), "--query", q, "--passages", str(tmp_path / "p.txt"),
                 "--passage", passages[3], "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    scores = Ranker.from_pretrained(folders / "dot").predict([q] * 4, [p.replace("\n", " ") for p in passages])
    order = torch.argsort(scores, descending=True, stable=True)[:3].tolist()
    assert [line.split("\t")[1] for line in lines] == [str(i + 1) for i in order]  # ids: line numbers, then 4
    assert [line.split("\t")[0] for line in lines] == ["1", "2", "3"]


def test_encode_bert_dot_and_colbert_and_refuse_cross_encoders(folders, shared_data, tmp_path, capsys):
    import kd

    queries = shared_data / "trec-dl-2019" / "queries.jsonl"
    assert main(["encode", "--model", str(folders / "dot"), "--input", str(queries), "--kind", "queries",
                 "--out", str(tmp_path / "q.npy")]) == 0
    emb = np.load(tmp_path / "q.npy")
    ids = (tmp_path / "q.npy.ids").read_text().split()
    assert emb.shape == (43, 384) and len(ids) == 43
    from kd.data import load_queries

    texts = load_queries(queries)
    np.testing.assert_allclose(emb[:3], kd.load(str(folders / "dot")).encode_queries([texts[i] for i in ids[:3]]),
                               rtol=1e-5, atol=1e-6)
    assert main(["encode", "--model", str(folders / "colbert"), "--input", str(queries), "--kind", "queries",
                 "--out", str(tmp_path / "cq.npy")]) == 0
    packed = np.load(tmp_path / "cq.npz")
    assert packed["offsets"].shape == (44,) and packed["vectors"].shape == (packed["offsets"][-1], 128)
    assert list(packed["ids"]) == ids
    capsys.readouterr()
    assert main(["encode", "--model", str(folders / "cat"), "--input", str(queries), "--kind", "docs",
                 "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "'bert_cat' model" in err and "only dual encoders" in err and not (tmp_path / "x.npy").exists()


def test_bad_input_exits_2_with_a_message(folders, capsys):
    assert main(["rerank", "--model", str(folders / "dot"), "--query", "q", "--passages", "/no/such.tsv"]) == 2
    assert "file not found: /no/such.tsv" in capsys.readouterr().err
    assert main(["rerank", "--model", str(folders / "dot"), "--run", "x.trec"]) == 2
    assert "--run needs --queries and --corpus" in capsys.readouterr().err
    assert main(["rerank", "--model", "./no/such/model", "--query", "q", "--passage", "p"]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_kd_command_is_installed_with_help():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kd"] == "kd.cli:main"
    exe = shutil.which("kd")
    cmd = [exe] if exe else [sys.executable, "-m", "kd.cli"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "rerank" in out.stdout and "encode" in out.stdout
    out = subprocess.run(cmd + ["rerank", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--run FILE" in out.stdout and "models:/<name>@<alias>" in out.stdout
    out = subprocess.run(cmd + ["encode"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "required" in out.stderr
