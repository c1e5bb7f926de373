"""kd export --format onnx: real all-MiniLM-L6-v2 layers (2-layer students), real onnxruntime, real SciFact pairs.

The pairs: the first 50 claims of SciFact's test qrels, each with its relevant abstract and with the relevant
abstract of the next claim (100 pairs). The cross-encoder students' heads are untrained, and a random head reads a
direction in which the untrained [CLS] barely varies (score std ~1e-3), so int8 rounding would be all the ranking
there is; their head is set to the first principal direction of the pairs' [CLS] vectors instead (the direction
that varies most, as a trained head's does). Even so the [CLS] of an untrained cross-encoder varies little against
its magnitude, and int8 keeps Spearman ≈ 0.93–0.94 there (measured), where the bi-encoders keep ≈ 0.999.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

ARCHS = ("bert_cat", "tinybert_cat", "bert_dot", "colbert")
INT8_ARCHS = ("bert_cat", "bert_dot", "colbert")  # tinybert_cat's graph is bert_cat's up to the head: not repeated
# int8 Spearman floors, each under what was measured on these pairs (bert_cat 0.94, bert_dot 0.998, colbert 0.999)
INT8_SPEARMAN = {"bert_cat": 0.9, "bert_dot": 0.99, "colbert": 0.99}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def pairs(shared_data):
    from kd.data import load_passages, load_queries

    root = shared_data / "beir" / "scifact"
    queries = load_queries(root / "queries.jsonl")
    corpus = load_passages(root / "corpus.jsonl", show_progress=False)
    with open(root / "qrels" / "test.tsv") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:51]
    qs, ps = [], []
    for i, (qid, docid, _) in enumerate(rows):
        qs += [queries[qid]] * 2
        ps += [corpus[docid], corpus[rows[(i + 1) % len(rows)][1]]]
    return qs, ps


def _principal_head(model, qs, ps) -> None:
    """Point an untrained cross-encoder head along the pairs' first principal [CLS] direction (module docstring)."""
    with torch.inference_mode():
        cls = model.encoder(**model.tokenize(qs, ps)).last_hidden_state[:, 0]
    w = torch.linalg.svd(cls - cls.mean(0), full_matrices=False).Vh[0]
    with torch.no_grad():
        model.classifier.weight.copy_(w[None] if model.architecture == "bert_cat" else torch.stack([-w / 2, w / 2]))
        model.classifier.bias.zero_()


@pytest.fixture(scope="module")
def students(minilm_path, pairs):
    from kd.init import layer_subset_student
    from kd.models import get_model_class

    torch.manual_seed(0)
    options = {"bert_cat": {"max_passage_length": 128}, "tinybert_cat": {"max_length": 160},
               "bert_dot": {"max_passage_length": 128}, "colbert": {"max_passage_length": 128}}
    out = {}
    for arch in ARCHS:
        model = layer_subset_student(get_model_class(arch).from_backbone(minilm_path, **options[arch]), "bottom", 2)
        out[arch] = model.eval()  # before the head is fitted: no dropout in the [CLS] vectors it reads
        if arch in ("bert_cat", "tinybert_cat"):
            _principal_head(model, *pairs)
    return out


@pytest.fixture(scope="module")
def exports(students, tmp_path_factory):
    """{(arch, None | "int8"): exported folder}."""
    from kd.export import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    return {(arch, q): export_onnx(model, root / f"{arch}-{q or 'fp32'}", quantize=q,
                                   source={"model": f"test {arch}"})
            for arch, model in students.items() for q in (None, "int8") if q is None or arch in INT8_ARCHS}


@pytest.fixture(scope="module")
def reference(students, pairs):
    return {arch: model.predict(*pairs, batch_size=16).numpy() for arch, model in students.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_export_scores_as_pytorch_through_the_one_loader(arch, students, exports, pairs, reference):
    from kd.models.loader import load_ranker

    model = load_ranker(exports[arch, None])
    assert model.architecture == arch and isinstance(model, type(students[arch]))
    got = model.predict(*pairs, batch_size=16).numpy()
    # ColBERT's scores are sums of ~40 unnormalised dot products (|s| ≈ 100–300): fp32 summation order adds a
    # relative 1e-7 (measured 6e-5 absolute), so it also gets rtol=1e-6
    np.testing.assert_allclose(got, reference[arch], atol=1e-4, rtol=1e-6 if arch == "colbert" else 0)
    # another batch size: other padding, same scores
    np.testing.assert_allclose(model.predict(pairs[0][:20], pairs[1][:20], batch_size=7).numpy(), got[:20],
                               atol=1e-5, rtol=1e-6 if arch == "colbert" else 0)


@pytest.mark.parametrize("arch", INT8_ARCHS)
def test_int8_scores_keep_the_ranking(arch, students, exports, pairs, reference):
    from kd.models.loader import load_ranker

    model = load_ranker(exports[arch, "int8"])
    got = model.predict(*pairs, batch_size=16).numpy()
    rho = spearman(got, reference[arch])
    assert rho >= INT8_SPEARMAN[arch], f"{arch}: int8 Spearman {rho:.4f}"
    assert model.quantization["weights"] == "int8" and model.quantization["per_channel"] is True
    # int8 Linear weights: 1 byte instead of 4 (embedding tables and LayerNorms stay fp32)
    linear = sum(m.weight.numel() for m in students[arch].encoder.encoder.modules() if isinstance(m, torch.nn.Linear))
    saved = exports[arch, None].joinpath("model.onnx").stat().st_size - \
        exports[arch, "int8"].joinpath("model.onnx").stat().st_size
    assert saved > 0.9 * 3 * linear


@pytest.mark.parametrize("arch", ("bert_dot", "colbert"))
def test_dual_encoders_encode_as_pytorch_through_kd_load(arch, students, exports, pairs):
    import kd
    from kd.loaded import LoadedRanker

    onnx, ref = kd.load(str(exports[arch, None]), device="cpu"), LoadedRanker(students[arch])
    assert onnx.is_dual_encoder and onnx.info()["parameters"] == students[arch].num_parameters()
    qs, ps = pairs[0][:10:2], pairs[1][:10]
    for fn in ("encode_queries", "encode_docs"):
        texts = qs if fn == "encode_queries" else ps
        got, want = getattr(onnx, fn)(texts, batch_size=4), getattr(ref, fn)(texts, batch_size=4)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, atol=1e-4)
    np.testing.assert_allclose(onnx.rerank(qs[0], ps), ref.rerank(qs[0], ps), atol=1e-4, rtol=1e-6)


def test_manifest_makes_the_folder_self_describing(exports, students, minilm_path):
    from kd.export import read_manifest
    from kd.export.manifest import sha256

    folder = exports["colbert", "int8"]
    m = read_manifest(folder)
    assert {p.name for p in folder.iterdir()} >= {"kd_onnx.json", "model.onnx", "tokenizer.json",
                                                  "tokenizer_config.json"}
    assert m["architecture"] == "colbert" and m["options"] == students["colbert"].options
    assert m["graphs"]["model"]["sha256"] == sha256(folder / "model.onnx")
    assert m["graphs"]["model"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert m["graphs"]["model"]["outputs"] == ["vectors"] and m["opset"] == 17 and m["exporter"] == "torchscript"
    assert m["source"]["model"] == "test colbert" and m["source"]["num_layers"] == 2
    assert m["source"]["parameters"] == students["colbert"].num_parameters()
    assert m["versions"]["onnxruntime"] and m["check"]["sample_pairs"] == 2
    assert read_manifest(exports["bert_dot", None])["embedding_dim"] == 384


def test_a_changed_graph_file_is_refused(exports, tmp_path):
    import shutil

    from kd.models.loader import load_ranker

    folder = shutil.copytree(exports["bert_cat", "int8"], tmp_path / "copy")
    with open(folder / "model.onnx", "r+b") as f:
        f.seek(-16, 2)
        f.write(b"\0" * 16)
    with pytest.raises(ValueError, match="sha256 differs"):
        load_ranker(folder)


def test_teacher_kinds_and_layers_are_checked_as_for_kd_folders(exports):
    from kd.models.loader import load_ranker

    with pytest.raises(ValueError, match="dual encoder, not a cross-encoder"):
        load_ranker(exports["bert_dot", None], kind="cross")
    assert load_ranker(exports["bert_dot", None], kind="bi").architecture == "bert_dot"
    with pytest.raises(ValueError, match="ONNX export"):
        load_ranker(exports["bert_cat", None], layers="bottom", num_layers=1)


def test_cli_exports_a_saved_folder_and_reranks_with_the_export(students, tmp_path, capsys, pairs):
    from kd.cli import main

    src = students["bert_cat"].save_pretrained(tmp_path / "student")
    out = tmp_path / "served"
    assert main(["export", "--model", str(src), "--format", "onnx", "--out", str(out)]) == 0
    assert "exported bert_cat (fp32" in capsys.readouterr().err
    manifest = json.loads((out / "kd_onnx.json").read_text())
    assert manifest["source"]["ref"]["kind"] == "local" and manifest["source"]["kd_config.json_sha256"]
    q, ps = pairs[0][0], pairs[1][:4]
    assert main(["rerank", "--model", str(out), "--query", q, *sum((["--passage", p] for p in ps), []),
                 "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    want = students["bert_cat"].predict([q] * 4, ps).numpy()
    assert [r["id"] for r in ranked] == [str(i + 1) for i in np.argsort(-want, kind="stable")]
    np.testing.assert_allclose([r["score"] for r in ranked], np.sort(want)[::-1], atol=1e-4)


def test_bad_requests_fail_before_any_work(tmp_path, capsys, monkeypatch, exports):
    import kd.models.loader
    from kd.cli import main

    def no_load(*a, **k):
        raise AssertionError("loaded a model for a request that should have been refused")

    monkeypatch.setattr(kd.models.loader, "load_ranker", no_load)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    cases = {"prettr": "cannot be exported to ONNX: PreTTR's speed comes from storing",
             "tk": "exporting TK is not implemented"}
    for arch, message in cases.items():  # the architecture is read from kd_config.json alone: no weights needed
        folder = tmp_path / arch
        folder.mkdir()
        (folder / "kd_config.json").write_text(json.dumps({"architecture": arch, "options": {}}))
        assert main(["export", "--model", str(folder), "--out", str(tmp_path / f"{arch}-out")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / f"{arch}-out").exists()
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    assert main(["export", "--model", str(not_a_model), "--out", str(tmp_path / "o")]) == 2
    assert "is not a kd model folder" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "prettr"), "--out", str(occupied)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (occupied / "keep.txt").read_text() == "x"
    assert main(["export", "--model", str(exports["bert_cat", None]), "--out", str(tmp_path / "o")]) == 2
    assert "is already an ONNX export" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--model", str(not_a_model), "--quantize", "int4", "--out", str(tmp_path / "o")])


def test_export_onnx_refuses_an_unexportable_model_object(minilm_path, tmp_path):
    from kd.export import ExportError, export_onnx
    from kd.init import layer_subset_student
    from kd.models import PreTTR

    model = layer_subset_student(PreTTR.from_backbone(minilm_path, split_layer=1), "bottom", 1)
    with pytest.raises(ExportError, match="'prettr' cannot be exported"):
        export_onnx(model, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_bench_script_declares_the_keys_it_writes():
    """bench/export.py is run by hand (a smoke run: --queries 3 --repeats 1); here only its surface is checked."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "export.py"
    spec = importlib.util.spec_from_file_location("kd_bench_export", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert {"speedup_vs_pytorch_fp32", "speedup_vs_st_onnx", "st_onnx_unavailable", "ndcg_delta", "pairs_per_s",
            "machine"} <= set(bench.RESULT_KEYS)
    args = bench.parse_args(["--queries", "3"])
    assert (args.queries, args.repeats, args.model) == (3, 2, None) and args.out.name == "export-cpu.json"
    # the headline is the int8 export's, as scalars; a peer that did not run leaves speedup_vs_st_onnx null
    pps = {"pytorch_fp32": 100.0, "onnx_fp32": 110.0, "onnx_int8": 250.0, "st_onnx": None, "st_onnx_int8": None}
    ndcg = {"pytorch_fp32": 0.5, "onnx_fp32": 0.5, "onnx_int8": 0.497}
    head = bench.headline(pps, ndcg)
    assert head["speedup_vs_pytorch_fp32"] == 2.5 and head["speedup_vs_st_onnx"] is None
    assert head["ndcg_delta"] == pytest.approx(-0.003) and head["speedups"]["vs_pytorch_fp32"]["onnx_fp32"] == 1.1
