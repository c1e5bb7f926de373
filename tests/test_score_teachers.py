"""jobs/score_teachers.py end to end: SciFact train qrels + BM25 → mined triples → teacher ensembles on Ray Data.

Two ensembles: two cross-encoders combined by the raw mean (the paper's T2), and members of every kind (a
cross-encoder, the all-MiniLM-L6-v2 bi-encoder, BM25 over the SciFact corpus) combined by z-scores; then the
recombination of members.parquet by `kd teachers combine`, and members that cannot score refused before Ray.
"""
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


def _combine(capsys, *args: str) -> tuple[int, str]:
    """`kd teachers combine ARGS` (in-process: the CLI's own main) → (exit code, stderr)."""
    from kd.cli import main

    capsys.readouterr()
    rc = main(["teachers", "combine", *args])
    return rc, capsys.readouterr().err


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
        "combine": "mean",
        "output_dir": str(root / "out"),
        "batch_size": 8, "window": 8, "shard_size": 6, "show_progress": False,
        "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "experiment": "score-test"},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def _triples(workdir: Path) -> list[list[str]]:
    return [line.split("\t") for line in (workdir / "triples.tsv").read_text().splitlines()]


def _texts(shared_data: Path, triples: list[list[str]]) -> tuple[list[str], list[str], list[str]]:
    from kd.data import load_beir

    beir = load_beir(shared_data / "beir" / "scifact", split=None)
    texts = beir.texts()
    return [beir.queries[t[0]] for t in triples], [texts[t[1]] for t in triples], [texts[t[2]] for t in triples]


def _runs(workdir: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    return mlflow.search_runs(experiment_names=["score-test"], output_format="list")


def test_mean_ensemble_file_is_the_t2_mean_of_members_and_reads_back(workdir, shared_data, tmp_path, capsys):
    proc = _job(workdir / "config.yaml", "show_progress=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # stdout is not a terminal: one calm progress line, not Ray Data's progress block per shard (kept for --verbose)
    assert "teacher scoring: 10/10 triples (100%)" in proc.stderr
    assert "Running Dataset" not in proc.stderr + proc.stdout
    assert "mean (a ×1, b ×1)" in proc.stdout
    out = workdir / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["triples"] == 10 and summary["skipped"] == 0 and summary["shards"] == 2
    assert summary["combination"] == {"method": "mean", "names": ["a", "b"], "weights": [1.0, 1.0],
                                      "means": None, "stds": None}
    scores = read_teacher_scores(out / "teacher_scores.tsv", show_progress=False)  # the published-format reader
    members = pq.read_table(out / "members.parquet").to_pydict()
    assert len(scores) == 10
    triples = _triples(workdir)
    assert [str(q) for q in scores.qid] == [t[0] for t in triples]  # input order kept across shards
    for i in range(10):
        for side in ("pos", "neg"):
            each = [np.float64(members[f"{m}_{side}"][i]) for m in ("a", "b")]
            assert getattr(scores, f"{side}_score")[i] == (each[0] + each[1]) / 2  # exactly the mean, per line
    assert not np.allclose(members["a_pos"], members["b_pos"])  # two really different teachers

    # members agree with scoring the same pairs directly
    from kd.teachers import load_cross_encoder_teacher

    q, pos, _ = _texts(shared_data, triples)
    direct = load_cross_encoder_teacher(workdir / "teacher_a").predict(q, pos)
    np.testing.assert_allclose(members["a_pos"], direct.numpy(), rtol=1e-5, atol=1e-5)

    # tracked in MLflow with counts, teacher identities and the combination
    runs = _runs(workdir)
    assert len(runs) == 1
    assert runs[0].data.metrics["triples"] == 10 and runs[0].data.metrics["pairs_per_second"] > 0
    assert runs[0].data.tags["kd.teacher.a"].startswith("cross:")
    assert runs[0].data.params["combination.method"] == "mean" and runs[0].data.params["combine"] == "mean"
    first_run = runs[0].info.run_id

    # rerun: every shard is reused, nothing rescored, identical output
    before = (out / "teacher_scores.tsv").read_bytes()
    (out / "shards" / "part-00001.parquet").unlink()  # as if the job died before the last shard
    again = _job(workdir / "config.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reused_from_shards"] == 6 and summary["scored_now"] == 4
    assert (out / "teacher_scores.tsv").read_bytes() == before
    # the rerun reopened the first MLflow run instead of starting a second one
    runs = _runs(workdir)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(first_run, "FINISHED")]
    assert runs[0].data.metrics["scored_now"] == 4 and runs[0].data.params["show_progress"] == "True"

    # the ensemble file is rebuilt from members.parquet exactly, with the combination it records
    rc, err = _combine(capsys, "--members", str(out / "members.parquet"), "--out", str(tmp_path / "re"))
    assert rc == 0, err
    assert (tmp_path / "re" / "teacher_scores.tsv").read_bytes() == before
    assert (tmp_path / "re" / "ensemble" / "kd_ensemble.json").read_bytes() == (
        out / "ensemble" / "kd_ensemble.json").read_bytes()


NAMES, WEIGHTS = ["a", "minilm", "bm25"], np.array([1.0, 1.0, 0.5])


@pytest.fixture(scope="module")
def every_kind(workdir, shared_data, minilm_path) -> Path:
    """The job's output for a cross-encoder, the all-MiniLM-L6-v2 bi-encoder and BM25 (weight 0.5), zscore."""
    root = workdir / "every_kind"
    root.mkdir()
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config.update(output_dir=str(root / "out"), combine="zscore", shard_size=10, teachers=[
        {"name": "a", "path": str(workdir / "teacher_a")},
        {"name": "minilm", "kind": "bi", "path": minilm_path},
        {"name": "bm25", "kind": "bm25", "corpus": str(shared_data / "beir" / "scifact" / "corpus.jsonl"),
         "weight": 0.5},
    ])
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    proc = _job(root / "config.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _raw(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    members = pq.read_table(out / "members.parquet").to_pydict()
    return {n: (np.asarray(members[f"{n}_pos"], np.float64), np.asarray(members[f"{n}_neg"], np.float64))
            for n in NAMES}


def test_members_of_every_kind_scored_and_zscore_combination_recorded(every_kind, workdir, shared_data,
                                                                     minilm_path):
    from kd.data import BM25Index, read_beir_corpus
    from kd.teachers import Combination, load_bi_encoder_teacher, load_ensemble

    corpus = shared_data / "beir" / "scifact" / "corpus.jsonl"
    out = every_kind / "out"
    names, weights = NAMES, WEIGHTS
    raw = _raw(out)

    # each member's raw scores are its own: BM25 equals bm25s's score of the document, the bi-encoder its predict
    triples = _triples(workdir)
    q, pos, neg = _texts(shared_data, triples)
    index = BM25Index(read_beir_corpus(corpus), show_progress=False)
    row = {d: i for i, d in enumerate(index.doc_ids)}
    import bm25s

    for i, t in enumerate(triples):
        tokens = bm25s.tokenize([q[i]], lower=True, stopwords=index.stopwords, stemmer=index._stemmer,
                                return_ids=False, show_progress=False)[0]
        ref = index.retriever.get_scores(tokens)
        np.testing.assert_allclose([raw["bm25"][0][i], raw["bm25"][1][i]], [ref[row[t[1]]], ref[row[t[2]]]],
                                   rtol=2e-6)
    # BM25's scale is not the cosine's (one positive here shares no term with its claim: 0, as in bm25s)
    assert (raw["bm25"][0] > 0).sum() >= 8 and raw["bm25"][0].mean() > 5 * np.abs(raw["minilm"][0]).mean()
    bi = load_bi_encoder_teacher(minilm_path).predict(q, neg)
    np.testing.assert_allclose(raw["minilm"][1], bi.numpy(), rtol=1e-5, atol=1e-5)

    # the combination: each member standardised over all 20 of its scores (pos and neg), weighted mean
    summary = json.loads((out / "summary.json").read_text())
    comb = summary["combination"]
    assert comb["method"] == "zscore" and comb["names"] == names and comb["weights"] == weights.tolist()
    every = {n: np.concatenate(raw[n]) for n in names}
    np.testing.assert_allclose(comb["means"], [every[n].mean() for n in names], rtol=1e-12)
    np.testing.assert_allclose(comb["stds"], [every[n].std() for n in names], rtol=1e-12)
    scores = read_teacher_scores(out / "teacher_scores.tsv", show_progress=False)
    for side, col in ((0, scores.pos_score), (1, scores.neg_score)):
        z = [(raw[n][side] - every[n].mean()) / every[n].std() for n in names]
        np.testing.assert_allclose(col, sum(w * zi for w, zi in zip(weights, z)) / weights.sum(), rtol=1e-12)
    # recorded with the ensemble folder and the MLflow run; the folder scores as the file says
    assert json.loads((out / "ensemble" / "kd_ensemble.json").read_text())["combination"] == comb
    ensemble = load_ensemble(out / "ensemble")
    assert ensemble.combination == Combination.from_dict(comb)
    np.testing.assert_allclose(ensemble.predict(q, pos).numpy(), scores.pos_score, rtol=1e-4, atol=1e-4)
    params = next(r for r in _runs(workdir) if r.data.params.get("combine") == "zscore").data.params
    assert params["combination.bm25.weight"] == "0.5" and params["combination.minilm.std"] == repr(comb["stds"][1])
    assert "'kind': 'bm25'" in params["teachers"]


def test_zscore_rerun_is_identical_and_members_recombine_without_rescoring(every_kind, workdir, tmp_path, capsys):
    out = every_kind / "out"
    raw = _raw(out)
    triples = _triples(workdir)

    # a rerun gives the same bytes, without rescoring or starting Ray
    before = (out / "teacher_scores.tsv").read_bytes()
    again = _job(every_kind / "config.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "teacher_scores.tsv").read_bytes() == before
    assert json.loads((out / "summary.json").read_text())["scored_now"] == 0
    assert "Started a local Ray instance" not in again.stderr

    # recombined from members.parquet: the stored combination → the same bytes; another one → another, correct file
    rc, err = _combine(capsys, "--members", str(out / "members.parquet"), "--combine", "zscore",
                       "--out", str(tmp_path / "z"))
    assert rc == 0 and "zscore (a ×1, minilm ×1, bm25 ×0.5)" in err, err
    assert (tmp_path / "z" / "teacher_scores.tsv").read_bytes() == before
    assert (tmp_path / "z" / "ensemble" / "kd_ensemble.json").read_bytes() == (
        out / "ensemble" / "kd_ensemble.json").read_bytes()
    rc, err = _combine(capsys, "--members", str(out / "members.parquet"), "--combine", "mean", "--weight", "bm25=2",
                       "--out", str(tmp_path / "m"))
    assert rc == 0, err
    mean = read_teacher_scores(tmp_path / "m" / "teacher_scores.tsv", show_progress=False)
    assert (tmp_path / "m" / "teacher_scores.tsv").read_bytes() != before
    for side, col in ((0, mean.pos_score), (1, mean.neg_score)):
        np.testing.assert_allclose(col, (raw["a"][side] + raw["minilm"][side] + 2 * raw["bm25"][side]) / 4,
                                   rtol=1e-15)
    assert [str(x) for x in mean.neg_pid] == [t[2] for t in triples]
    rc, err = _combine(capsys, "--members", str(out / "members.parquet"), "--weight", "cross=2",
                       "--out", str(tmp_path / "x"))
    assert rc == 2 and "unknown members ['cross']" in err and "'bm25'" in err
    rc, err = _combine(capsys, "--members", str(out / "members.parquet"), "--weight", "bm25", "--out", str(tmp_path))
    assert rc == 2 and "give NAME=WEIGHT" in err

    # the job with another combination recombines its finished shards (no rescoring) into the same file as the CLI
    proc = _job(every_kind / "config.yaml", "combine=mean")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["scored_now"] == 0
    assert _combine(capsys, "--members", str(out / "members.parquet"), "--out", str(tmp_path / "m2"))[0] == 0
    assert (tmp_path / "m2" / "teacher_scores.tsv").read_bytes() == (out / "teacher_scores.tsv").read_bytes()


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


def test_a_member_that_cannot_score_fails_naming_it_before_ray(workdir, minilm_path, tmp_path, capsys):
    from jobs.score_teachers import main

    (tmp_path / "empty").mkdir()
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    cases = [
        ({"name": "lex", "kind": "bm25"}, "teacher 'lex' (kind bm25): BM25 needs a corpus"),
        ({"name": "lex", "kind": "bm25", "corpus": str(tmp_path / "gone.jsonl")},
         "teacher 'lex' (kind bm25): corpus file not found"),
        ({"name": "lex", "kind": "bm25", "path": str(workdir / "teacher_a"), "corpus": config["text"]["passages"]},
         "teacher 'lex' (kind bm25): path"),
        ({"name": "minilm", "kind": "cross", "path": minilm_path},
         "teacher 'minilm' (kind cross): " + minilm_path + " is a bi-encoder (sentence-transformers folder, no "
                                                           "classification head); use kind: bi"),
        ({"name": "nothing", "path": str(tmp_path / "empty")}, "teacher 'nothing' (kind cross): "),
    ]
    start = time.perf_counter()
    for i, (member, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump({**config, "teachers": [config["teachers"][0], member],
                                        "output_dir": str(tmp_path / f"out{i}")}))
        assert main(["--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert "field teachers.1" in err and message in err, err
    assert "holds no model" in err
    assert time.perf_counter() - start < 30
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()
    assert not any((tmp_path / f"out{i}").exists() for i in range(len(cases)))


# ---------------------------------------------------------------------------------------------------------------
# one streaming pipeline (issue 17, item 3): the ensemble built once per actor, windows fixed by row index


@pytest.fixture(scope="module")
def streamed(every_kind, workdir) -> Path:
    """The every-kind ensemble again, as 4 shards of 3 rows in windows of 2 (the last window of a shard is 1 row),
    one actor: one pipeline must serve every shard with the one ensemble its actor built."""
    root = workdir / "streamed"
    root.mkdir()
    config = yaml.safe_load((every_kind / "config.yaml").read_text())
    config.update(output_dir=str(root / "out"), shard_size=3, window=2, num_actors=1)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    proc = _job(root / "config.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_one_pipeline_loads_the_ensemble_once_per_actor_across_shards(streamed):
    out = streamed / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards"] == 4 and summary["scored_now"] == 10 and summary["triples"] == 10
    assert summary["actors"] == 1 and summary["model_loads_per_actor"] == 1
    assert 0 < summary["first_row_seconds"] < 600 and summary["seconds"] > 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"part-{i:05d}.parquet" for i in range(4)]
    assert not (out / "plan").exists()  # the job's plan is removed once every shard is written
    for key in ("input_lines", "skipped", "missing_query", "missing_passage", "bad_lines", "duplicates",
                "reused_from_shards", "pairs_per_second", "combination", "output", "members", "ensemble"):
        assert key in summary


def test_streamed_scores_equal_the_members_own_scorers_window_by_window(streamed, workdir, shared_data):
    """What the per-shard implementation computed: each shard cut into windows of `window` rows from its first row,
    each window's 2n pairs scored by every member's own predict (one thread, as in a 1-CPU actor) — bit for bit."""
    from kd.configs.score_teachers import ScoreTeachersConfig
    from kd.teachers import TeacherEnsemble, load_member

    config = ScoreTeachersConfig(**yaml.safe_load((streamed / "config.yaml").read_text()))
    q, pos, neg = _texts(shared_data, _triples(workdir))
    ensemble = TeacherEnsemble([load_member(t.model_dump()) for t in config.teachers], names=NAMES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = {f"{n}_{s}": [] for n in NAMES for s in ("pos", "neg")}
        for shard in range(0, 10, 3):
            for w in range(shard, min(shard + 3, 10), 2):
                rows = range(w, min(w + 2, shard + 3, 10))
                qs = [q[i] for i in rows]
                m = ensemble.predict_members(qs + qs, [pos[i] for i in rows] + [neg[i] for i in rows],
                                             batch_size=config.batch_size).numpy().astype(np.float32)
                for j, n in enumerate(NAMES):
                    expected[f"{n}_pos"].append(m[j, :len(rows)])
                    expected[f"{n}_neg"].append(m[j, len(rows):])
    finally:
        torch.set_num_threads(threads)
    members = pq.read_table(streamed / "out" / "members.parquet")
    assert members.column("qid").to_pylist() == [t[0] for t in _triples(workdir)]
    for col, parts in expected.items():
        np.testing.assert_array_equal(members.column(col).to_numpy(), np.concatenate(parts), err_msg=col)


def test_a_killed_streaming_job_resumes_to_the_same_bytes(streamed, tmp_path):
    """SIGKILL the job once its first shard is on disk; the rerun scores only the missing shards, and the file is
    byte for byte the uninterrupted run's."""
    import os
    import signal

    config = yaml.safe_load((streamed / "config.yaml").read_text())
    config.update(output_dir=str(tmp_path / "out"), shard_size=2, window=1)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "jobs.score_teachers", "--config", str(tmp_path / "config.yaml")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = tmp_path / "out" / "shards" / "part-00000.parquet"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (tmp_path / "out" / "shards").iterdir() if p.suffix == ".parquet")
    assert 1 <= len(done) < 5, done  # killed in the middle
    again = _job(tmp_path / "config.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["reused_from_shards"] == 2 * len(done) and summary["scored_now"] == 10 - 2 * len(done)
    # shards of 2 rows in windows of 1 give other bi-encoder batches than the reference run's windows of 2: the
    # reference is this config's own uninterrupted run
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({**config, "output_dir": str(tmp_path / "ref")}))
    assert _job(ref).returncode == 0
    assert (tmp_path / "out" / "teacher_scores.tsv").read_bytes() == (tmp_path / "ref" / "teacher_scores.tsv").read_bytes()
    assert (tmp_path / "out" / "members.parquet").read_bytes() != b""


def test_a_malformed_triples_line_is_reported_with_file_and_line_before_ray(workdir, tmp_path):
    bad = tmp_path / "triples.tsv"
    good = (workdir / "triples.tsv").read_text().splitlines()
    bad.write_text("\n".join(good[:6] + ["1\t31715818"] + good[6:]) + "\n")  # two fields on line 7
    out = tmp_path / "out"
    proc = _job(workdir / "config.yaml", f"input={bad}", f"output_dir={out}")
    assert proc.returncode != 0
    assert f"{bad}, line 7" in proc.stderr, proc.stderr[-3000:]
    assert "Started a local Ray instance" not in proc.stderr
    assert not out.exists()  # the validation pass's plan is not left behind (nor the folder it made)

    proc = _job(workdir / "config.yaml", f"input={bad}", f"output_dir={out}", "strict=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_lines"] == 1 and summary["triples"] == 10 and summary["skipped"] == 0
    assert summary["model_loads_per_actor"] == 1
