"""kd.load / kd.registry against a real `mlflow server` (loopback, sqlite backend, proxied artifacts), and the
registered pyfunc served by `mlflow models serve`.

Models: students built on the real all-MiniLM-L6-v2 weights (2-layer subsets), registered through the same
`log_ranker` path jobs.distill and jobs.sweep use: BERT_DOT v1 (@champion) and v2 (@challenger), BERT_CAT, ColBERT.
They are models-from-code pyfuncs (no pickle); a crafted MLmodel cannot make kd.load touch files outside its artifact.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import kd
from kd.registry import NotADualEncoder, RegistryError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
DOT, CAT, COLBERT = "kd-reg-dot", "kd-reg-cat", "kd-reg-colbert"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, minilm_path):
    from kd.init import layer_subset_student
    from kd.models import BertCat, BertDot, ColBERT

    root = tmp_path_factory.mktemp("registry-models")
    torch.manual_seed(0)
    base = BertDot.from_backbone(minilm_path, pooling="mean", max_passage_length=96)
    layer_subset_student(base, "top-bottom", 2).save_pretrained(root / "dot")
    layer_subset_student(base, "bottom", 2).save_pretrained(root / "dot2")
    layer_subset_student(BertCat.from_backbone(minilm_path, max_passage_length=96), "bottom", 2).save_pretrained(
        root / "cat")
    layer_subset_student(ColBERT.from_backbone(minilm_path, max_passage_length=96), "bottom", 2).save_pretrained(
        root / "colbert")
    return root


@pytest.fixture(scope="module")
def registry(folders, mlflow_server):
    import mlflow
    from mlflow import MlflowClient

    from kd.runtime.pyfunc import log_ranker

    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri  # None unless set: then $MLFLOW_TRACKING_URI counts again
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment("registry-test")
    client = MlflowClient(mlflow_server.uri)
    runs = {}
    for folder, name, alias in [("dot", DOT, "champion"), ("dot2", DOT, "challenger"), ("cat", CAT, "champion"),
                                ("colbert", COLBERT, "champion")]:
        with mlflow.start_run(run_name=folder) as run:
            info = log_ranker(folders / folder, registered_name=name)
        client.set_registered_model_alias(name, alias, str(info.registered_model_version))
        runs[folder] = run.info.run_id
    mlflow.set_tracking_uri(previous)  # the tests name the server explicitly (or through the environment)
    yield {"uri": mlflow_server.uri, "runs": runs, "client": client, "server": mlflow_server}


def _pairs(sample_rows, n=6):
    return sample_rows[0]["query"], [r["passage"] for r in sample_rows[:n]]


def _reference(folder: Path, query: str, passages: list[str]) -> np.ndarray:
    from kd.models import Ranker

    return Ranker.from_pretrained(folder).predict([query] * len(passages), passages).numpy()


def test_load_by_alias_version_latest_run_and_folder(registry, folders, sample_rows, tmp_path, monkeypatch,
                                                     minilm_path):
    uri = registry["uri"]
    q, p = _pairs(sample_rows)
    champion = kd.load(f"models:/{DOT}@champion", tracking_uri=uri, cache_dir=tmp_path)
    assert (champion.architecture, champion.name, champion.version, champion.alias) == ("bert_dot", DOT, "1",
                                                                                       "champion")
    assert champion.is_dual_encoder and "champion" in repr(champion.info()["aliases"])
    np.testing.assert_array_equal(champion.rerank(q, p), _reference(folders / "dot", q, p))
    v2 = kd.load(f"models:/{DOT}/2", tracking_uri=uri, cache_dir=tmp_path)
    assert v2.version == "2"
    np.testing.assert_array_equal(v2.rerank(q, p), _reference(folders / "dot2", q, p))
    assert kd.load(f"models:/{DOT}/latest", tracking_uri=uri, cache_dir=tmp_path).version == "2"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the usual way: the environment names the server ...
    # ... unless this process called mlflow.set_tracking_uri before (other tests in the session do): clear that
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    by_run = kd.load(f"runs:/{registry['runs']['dot']}/model", cache_dir=tmp_path)
    np.testing.assert_array_equal(by_run.rerank(q, p), champion.rerank(q, p))
    local = kd.load(str(folders / "dot"))
    assert local.version is None and local.ref.kind == "local"
    np.testing.assert_array_equal(local.rerank(q, p), champion.rerank(q, p))
    hub = kd.load("sentence-transformers/all-MiniLM-L6-v2")  # an HF / sentence-transformers bi-encoder
    assert hub.architecture == "bert_dot" and hub.encode_queries([q]).shape == (1, 384)
    ranking = champion.rank(q, p, top_k=3)
    scores = champion.rerank(q, p)
    assert [i for i, _ in ranking] == list(np.argsort(-scores, kind="stable")[:3])


def test_encoders_match_rerank_and_cross_encoders_refuse_to_encode(registry, folders, sample_rows, tmp_path):
    uri = registry["uri"]
    q, p = _pairs(sample_rows)
    dot = kd.load(f"models:/{DOT}@champion", tracking_uri=uri, cache_dir=tmp_path)
    qe, de = dot.encode_queries([q]), dot.encode_docs(p)
    assert qe.shape == (1, 384) and de.shape == (len(p), 384) and qe.dtype == np.float32
    np.testing.assert_allclose(de @ qe[0], dot.rerank(q, p), rtol=1e-4, atol=1e-4)
    colbert = kd.load(f"models:/{COLBERT}@champion", tracking_uri=uri, cache_dir=tmp_path)
    (qv,), dv = colbert.encode_queries([q]), colbert.encode_docs(p)
    assert qv.shape[1] == 128 and len(dv) == len(p) and all(d.shape[1] == 128 for d in dv)
    late = np.array([(qv @ d.T).max(1).sum() for d in dv], dtype=np.float32)
    np.testing.assert_allclose(late, colbert.rerank(q, p), rtol=1e-4, atol=1e-3)
    cat = kd.load(f"models:/{CAT}@champion", tracking_uri=uri, cache_dir=tmp_path)
    np.testing.assert_array_equal(cat.rerank(q, p), _reference(folders / "cat", q, p))
    with pytest.raises(NotADualEncoder, match=r"'bert_cat' model.*only dual encoders \(bert_dot, colbert\)"):
        cat.encode_queries([q])
    with pytest.raises(NotADualEncoder, match="encode_docs"):
        cat.encode_docs(p)


def test_lookup_errors_name_what_was_looked_for(registry, tmp_path, monkeypatch):
    uri = registry["uri"]
    with pytest.raises(RegistryError) as e:
        kd.load("models:/no-such-model@champion", tracking_uri=uri)
    msg = str(e.value)
    assert "no registered model named 'no-such-model'" in msg and "models:/no-such-model@champion" in msg
    assert uri in msg and DOT in msg  # ... and lists what is registered there
    with pytest.raises(RegistryError, match=rf"'{DOT}' has no alias 'nope'.*{uri}.*@challenger → v2, @champion → v1"):
        kd.load(f"models:/{DOT}@nope", tracking_uri=uri)
    with pytest.raises(RegistryError, match=rf"'{DOT}' has no version 7 .*{uri}; its versions: \[1, 2\]"):
        kd.load(f"models:/{DOT}/7", tracking_uri=uri)
    empty = f"sqlite:///{tmp_path / 'empty.db'}"  # a registry without the model
    with pytest.raises(RegistryError, match=rf"no registered model named '{DOT}'.*{empty}.*has no registered models"):
        kd.load(f"models:/{DOT}@champion", tracking_uri=empty)
    with pytest.raises(RegistryError, match=rf"run 'deadbeef' \(from runs:/deadbeef/model\) not found.*{uri}"):
        kd.load("runs:/deadbeef/model", tracking_uri=uri)
    with pytest.raises(RegistryError, match="give a version or an alias"):
        kd.load(f"models:/{DOT}", tracking_uri=uri)
    with pytest.raises(FileNotFoundError, match="model folder not found: ./no/such/model"):
        kd.load("./no/such/model")
    from ray_head import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match=rf"cannot look up models:/{DOT}@champion in the model registry at {down}"):
        kd.load(f"models:/{DOT}@champion", tracking_uri=down)


def test_cache_is_keyed_by_version_so_a_moved_alias_is_followed(registry, folders, sample_rows, tmp_path):
    uri, client = registry["uri"], registry["client"]
    q, p = _pairs(sample_rows)
    kd.load(f"models:/{DOT}@champion", tracking_uri=uri, cache_dir=tmp_path)
    kd.load(f"models:/{DOT}@champion", tracking_uri=uri, cache_dir=tmp_path)
    assert len([d for d in tmp_path.iterdir() if not d.name.startswith(".")]) == 1  # downloaded once
    client.set_registered_model_alias(DOT, "champion", "2")
    try:
        moved = kd.load(f"models:/{DOT}@champion", tracking_uri=uri, cache_dir=tmp_path)
        assert moved.version == "2"
        np.testing.assert_array_equal(moved.rerank(q, p), _reference(folders / "dot2", q, p))
    finally:
        client.set_registered_model_alias(DOT, "champion", "1")


def test_cli_uses_registry_uris(registry, sample_rows, tmp_path, capsys, monkeypatch):
    from kd.cli import main

    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))

    uri = registry["uri"]
    q, p = _pairs(sample_rows)
    p = [t.replace("\n", " ") for t in p]  # one passage per line
    (tmp_path / "passages.tsv").write_text("".join(f"d{i}\t{t}\n" for i, t in enumerate(p)))
    assert main(["rerank", "--model", f"models:/{DOT}@champion", "--tracking-uri", uri, "--query", q,
                 "--passages", str(tmp_path / "passages.tsv"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    expected = kd.load(f"models:/{DOT}@champion", tracking_uri=uri, cache_dir=tmp_path).rerank(q, p)
    assert [r["id"] for r in shown] == [f"d{i}" for i in np.argsort(-expected, kind="stable")]
    np.testing.assert_allclose([r["score"] for r in shown], np.sort(expected)[::-1], rtol=1e-6)
    assert main(["lookup", "--model", f"models:/{DOT}@challenger", "--tracking-uri", uri]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == DOT and info["version"] == "2" and info["run_id"] == registry["runs"]["dot2"]
    assert main(["encode", "--model", f"models:/{DOT}@champion", "--tracking-uri", uri, "--input",
                 str(tmp_path / "passages.tsv"), "--kind", "docs", "--out", str(tmp_path / "d.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"),
                               kd.load(f"models:/{DOT}@champion", tracking_uri=uri,
                                       cache_dir=tmp_path).encode_docs(p), rtol=1e-6)
    assert main(["rerank", "--model", f"models:/{DOT}@gone", "--tracking-uri", uri, "--query", q,
                 "--passage", "x"]) == 2
    assert f"has no alias 'gone' (looked up for models:/{DOT}@gone)" in capsys.readouterr().err


def test_mlflow_models_serve_scores_equal_kd_load(registry, sample_rows, tmp_path):
    from ray_head import free_port

    uri = registry["uri"]
    port = free_port()
    log = tmp_path / "serve.log"
    # MLflow's pickle loading off: the served model must come from its code file, not from a python_model.pkl
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{DOT}@champion", "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"server not up:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        rows = [[r["query"], r["passage"]] for r in sample_rows[:8]]
        one_query = [[sample_rows[0]["query"], r["passage"]] for r in sample_rows[:8]]
        for data in (rows, one_query):
            body = json.dumps({"dataframe_split": {"columns": ["query", "passage"], "data": data}}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                served = np.asarray(json.loads(r.read())["predictions"], dtype=np.float32)
            ranker = kd.load(f"models:/{DOT}@champion", tracking_uri=uri, cache_dir=tmp_path / "cache")
            np.testing.assert_allclose(served, ranker.score([d[0] for d in data], [d[1] for d in data]),
                                       rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(served, ranker.rerank(one_query[0][0], [d[1] for d in one_query]),
                                   rtol=1e-6, atol=1e-6)
        # the logged signature: a batch_size param is accepted, a missing column is refused by name
        body = json.dumps({"dataframe_split": {"columns": ["query", "passage"], "data": one_query},
                           "params": {"batch_size": 3}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            np.testing.assert_allclose(np.asarray(json.loads(r.read())["predictions"], dtype=np.float32), served,
                                       rtol=1e-5, atol=1e-5)
        body = json.dumps({"dataframe_split": {"columns": ["query"], "data": [[one_query[0][0]]]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=60)
        assert err.value.code == 400 and "passage" in err.value.read().decode()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_crafted_mlmodel_cannot_move_a_folder_from_outside_the_artifact(tmp_path):
    """An MLmodel whose kd model path is absolute or climbs out with `..` made fetch os.replace that folder (outside
    the artifact) into the cache. Real sqlite store and artifacts: the load fails naming the field and value, and the
    outside folder is untouched."""
    import yaml
    from mlflow import MlflowClient

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    uri = f"sqlite:///{tmp_path / 'crafted.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("crafted", artifact_location=(tmp_path / "artifacts").as_uri())
    cache = tmp_path / "cache"
    for rel in (str(victim), "../" * 40 + str(victim).lstrip("/")):
        model = tmp_path / f"crafted-{len(rel)}"
        model.mkdir()
        (model / "MLmodel").write_text(yaml.safe_dump(
            {"flavors": {"python_function": {"artifacts": {"kd_model": {"path": rel, "uri": str(victim)}}}}}))
        run_id = client.create_run(experiment).info.run_id
        client.log_artifacts(run_id, str(model), "model")
        with pytest.raises(RegistryError) as e:
            kd.load(f"runs:/{run_id}/model", tracking_uri=uri, cache_dir=cache)
        msg = str(e.value)
        assert "flavors.python_function.artifacts.kd_model.path" in msg and repr(rel) in msg, msg
        assert "outside the downloaded artifact" in msg and f"runs:/{run_id}/model" in msg
        assert (victim / "keep.txt").read_text() == "mine" and sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
        assert not list(cache.iterdir())  # nothing moved in, the download's temp folder removed


def test_registered_pyfunc_is_models_from_code_and_never_unpickles(registry, folders, sample_rows, tmp_path,
                                                                  monkeypatch):
    """The logged model carries no pickle: its MLmodel names the code file MLflow runs (kd/runtime/pyfunc_model.py),
    and pyfunc load + predict work with MLflow's pickle loading switched off."""
    import mlflow
    import pandas as pd
    import yaml
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(registry["uri"]):  # as download_ranker_folder does: MLflow resolves models:/ globally
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{DOT}/1", dst_path=str(tmp_path / "art")))
    assert not [p.relative_to(local) for p in local.rglob("*") if p.suffix in (".pkl", ".pickle")]
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert Path(flavor["model_code_path"]).name == "pyfunc_model.py" and (local / "pyfunc_model.py").is_file()
    assert "python_model" not in flavor  # the key MLflow uses for a cloudpickled model
    assert (local / flavor["artifacts"]["kd_model"]["path"] / "kd_config.json").is_file()  # the layout kd.load reads
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setattr(sys, "path", list(sys.path))  # pyfunc.load_model prepends the model's code folder
    q, p = _pairs(sample_rows)
    frame = pd.DataFrame({"query": [q] * len(p), "passage": p})
    scores = mlflow.pyfunc.load_model(str(local)).predict(frame, params={"batch_size": 2})
    np.testing.assert_allclose(np.asarray(scores, dtype=np.float32), _reference(folders / "dot", q, p),
                               rtol=1e-5, atol=1e-5)


def test_versions_logged_with_a_pickle_still_load_through_kd_load(registry, folders, sample_rows, tmp_path):
    """Models registered before the models-from-code change hold a python_model.pkl: kd.load reads only their model
    folder (never the pickle), so they keep loading."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from kd.runtime.pyfunc import ARTIFACT_KEY, SIGNATURE, KDRanker

    with _use_tracking_uri(registry["uri"]):
        mlflow.set_experiment("registry-test")
        with mlflow.start_run(run_name="old-style") as run:  # how log_ranker logged before: a cloudpickled KDRanker
            mlflow.pyfunc.log_model(name="model", python_model=KDRanker(), signature=SIGNATURE,
                                    artifacts={ARTIFACT_KEY: str(folders / "dot")}, pip_requirements=["torch"])
    q, p = _pairs(sample_rows)
    old = kd.load(f"runs:/{run.info.run_id}/model", tracking_uri=registry["uri"], cache_dir=tmp_path)
    np.testing.assert_array_equal(old.rerank(q, p), _reference(folders / "dot", q, p))
