"""A registered version carries its ONNX export: `kd export --model models:/… --register` against a real `mlflow
server` (loopback, sqlite, proxied artifacts), then `kd.load(uri, format="onnx"[, quantize="int8"])`.

The version: a 2-layer BERT_CAT of the real all-MiniLM-L6-v2 weights, logged through `log_ranker` as jobs.distill
logs its students (v1 @champion, v2 @challenger: another layer subset).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kd
from kd.registry import RegistryError

pytestmark = pytest.mark.slow
CAT = "kd-onnx-cat"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, minilm_path, mlflow_server):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from kd.init import layer_subset_student
    from kd.models import BertCat
    from kd.runtime.pyfunc import log_ranker

    root = tmp_path_factory.mktemp("onnx-registry")
    torch.manual_seed(0)
    base = BertCat.from_backbone(minilm_path, max_passage_length=96)
    layer_subset_student(base, "bottom", 2).save_pretrained(root / "v1")
    layer_subset_student(base, "top-bottom", 2).save_pretrained(root / "v2")
    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment("registry-export-test")
    client = MlflowClient(mlflow_server.uri)
    for folder, alias in (("v1", "champion"), ("v2", "challenger")):
        with mlflow.start_run(run_name=folder):
            info = log_ranker(root / folder, registered_name=CAT)
        client.set_registered_model_alias(CAT, alias, str(info.registered_model_version))
    mlflow.set_tracking_uri(previous)  # the tests name the server explicitly
    yield {"uri": mlflow_server.uri, "client": client, "root": root}


@pytest.fixture(scope="module")
def attached(registry, tmp_path_factory):
    """`kd export … --register` of v1 (@champion), fp32 and int8: {variant: out folder}."""
    from kd.cli import main

    out = tmp_path_factory.mktemp("onnx-exports")
    folders = {}
    for variant, extra in (("fp32", []), ("int8", ["--quantize", "int8"])):
        folders[variant] = out / variant
        assert main(["export", "--model", f"models:/{CAT}@champion", "--tracking-uri", registry["uri"], "--format",
                     "onnx", *extra, "--out", str(folders[variant]), "--register"]) == 0
    return folders


def _pairs(sample_rows, n=8):
    return [sample_rows[0]["query"]] * n, [r["passage"] for r in sample_rows[:n]]


def test_registered_version_serves_its_attached_exports(registry, attached, sample_rows, tmp_path, monkeypatch):
    from kd.export.onnx_ranker import OnnxRanker
    from kd.models import Ranker

    uri, client = registry["uri"], registry["client"]
    tags = client.get_model_version(CAT, "1").tags
    run_id = client.get_model_version(CAT, "1").run_id
    assert tags["kd.onnx"].startswith(f"runs:/{run_id}/kd_onnx/{CAT}-v1/fp32-")
    assert tags["kd.onnx.int8"].startswith(f"runs:/{run_id}/kd_onnx/{CAT}-v1/int8-")
    assert "kd.onnx" not in client.get_model_version(CAT, "2").tags
    qs, ps = _pairs(sample_rows)
    want = Ranker.from_pretrained(registry["root"] / "v1").predict(qs, ps).numpy()

    fp32 = kd.load(f"models:/{CAT}@champion", tracking_uri=uri, cache_dir=tmp_path, format="onnx")
    assert isinstance(fp32.model, OnnxRanker) and fp32.model.quantization is None
    assert (fp32.version, fp32.alias, fp32.architecture) == ("1", "champion", "bert_cat")
    np.testing.assert_allclose(fp32.model.predict(qs, ps).numpy(), want, atol=1e-4)
    int8 = kd.load(f"models:/{CAT}/1", tracking_uri=uri, cache_dir=tmp_path, format="onnx", quantize="int8")
    assert int8.model.quantization["weights"] == "int8"
    got = int8.model.predict(qs, ps).numpy()
    assert got.shape == want.shape and np.isfinite(got).all()
    assert int8.model.manifest["graphs"]["model"]["sha256"] == \
        kd.export.read_manifest(attached["int8"])["graphs"]["model"]["sha256"]
    # the version's own model is untouched: without format it is still the PyTorch student
    plain = kd.load(f"models:/{CAT}@champion", tracking_uri=uri, cache_dir=tmp_path)
    assert not isinstance(plain.model, OnnxRanker)
    np.testing.assert_array_equal(plain.model.predict(qs, ps).numpy(), want)

    import mlflow.artifacts

    def no_download(*a, **k):
        raise AssertionError("downloaded an export already in the cache")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    again = kd.load(f"models:/{CAT}@champion", tracking_uri=uri, cache_dir=tmp_path, format="onnx")
    assert again.model.folder == fp32.model.folder


def test_exports_are_refused_where_they_do_not_belong(registry, attached, tmp_path, capsys):
    from kd.cli import main
    from kd.export import ExportError
    from kd.runtime.registry import attach_export

    uri = registry["uri"]
    with pytest.raises(RegistryError, match=rf"carries no fp32 ONNX export .* kd export --model models:/{CAT}/2 "
                                            r"--format onnx --out DIR --register"):
        kd.load(f"models:/{CAT}@challenger", tracking_uri=uri, cache_dir=tmp_path, format="onnx")
    with pytest.raises(RegistryError, match=rf"was exported from 'models:/{CAT}@champion', not from "
                                            rf"models:/{CAT}/2"):
        attach_export(f"models:/{CAT}@challenger", attached["fp32"], tracking_uri=uri)
    assert "kd.onnx" not in registry["client"].get_model_version(CAT, "2").tags
    with pytest.raises(RegistryError, match="is loaded as it is, without format"):
        kd.load(str(attached["fp32"]), format="onnx")
    with pytest.raises(ExportError, match="quantization 'int4' is not supported"):
        kd.load(f"models:/{CAT}@champion", tracking_uri=uri, cache_dir=tmp_path, format="onnx", quantize="int4")
    with pytest.raises(ValueError, match="give format='onnx'"):
        kd.load(f"models:/{CAT}@champion", tracking_uri=uri, cache_dir=tmp_path, quantize="int8")
    # --register needs a registered version, and says so before any export work
    assert main(["export", "--model", str(registry["root"] / "v1"), "--out", str(tmp_path / "o"), "--register"]) == 2
    assert "--register attaches the export to a registered version" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
