"""kd.models.loader: the one loader behind evaluation, the teacher members, `kd.load` and the CLI (real MiniLM)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kd.models import BertCat, BertDot, ColBERT, HFCrossEncoder
from kd.models.loader import load_model, load_ranker, load_spec, pick_device


@pytest.fixture(scope="module")
def folders(minilm_path, tmp_path_factory) -> dict[str, Path]:
    """A saved kd bert_dot (2 layers, short, to keep CPU time small) and a saved kd bert_cat."""
    root = tmp_path_factory.mktemp("loader")
    torch.manual_seed(0)
    dot = load_ranker(minilm_path, layers=[0, 5], options={"max_query_length": 16, "max_passage_length": 32})
    torch.manual_seed(0)
    cat = BertCat.from_backbone(minilm_path, max_passage_length=32)
    return {"dot": dot.save_pretrained(root / "dot"), "cat": cat.save_pretrained(root / "cat")}


def test_hub_names_build_by_kind(minilm_path):
    """kind any: sentence-transformers' truncation (max_seq_length 256); bi: kd's BertDot defaults; the teachers
    have always loaded that way and still do."""
    evaluated = load_ranker(minilm_path)
    teacher = load_ranker(minilm_path, kind="bi")
    assert isinstance(evaluated, BertDot) and isinstance(teacher, BertDot)
    assert evaluated.options["max_passage_length"] == 256 and evaluated.options["max_query_length"] == 256
    assert teacher.options["max_passage_length"] == BertDot.from_backbone(minilm_path).options["max_passage_length"]
    assert teacher.options["max_passage_length"] != 256 and teacher.options["pooling"] == "mean"
    assert not evaluated.training and not teacher.training
    assert load_ranker(minilm_path, options={"max_passage_length": 64}).options["max_passage_length"] == 64
    cross = load_ranker(minilm_path, kind="cross", max_length=128)
    assert isinstance(cross, HFCrossEncoder) and cross.options["max_length"] == 128


def test_kd_folders_load_as_saved_and_teacher_kinds_check_them(folders, caplog):
    q, p = ["what causes fever"], ["Fever is caused by infection."]
    dot = load_ranker(folders["dot"])
    torch.testing.assert_close(dot.predict(q, p), load_model(folders["dot"]).predict(q, p))
    assert len(dot.encoder.encoder.layer) == 2
    with caplog.at_level("WARNING"):
        load_ranker(folders["dot"], options={"max_passage_length": 8})
    assert "is a saved kd model: options ['max_passage_length']" in caplog.text
    assert isinstance(load_ranker(folders["cat"], kind="cross"), BertCat)
    assert isinstance(load_ranker(folders["dot"], kind="bi"), BertDot)
    with pytest.raises(ValueError, match="holds a 'bert_dot' dual encoder, not a cross-encoder"):
        load_ranker(folders["dot"], kind="cross")
    with pytest.raises(ValueError, match="holds a 'bert_cat' model, not a bi-encoder"):
        load_ranker(folders["cat"], kind="bi")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_ranker(folders["dot"], kind="bm25")


def test_registry_uris_go_through_the_injected_resolver(folders, minilm_path):
    with pytest.raises(ValueError, match="needs resolve_uri"):
        load_ranker("models:/student@champion")
    asked: list[str] = []
    model = load_ranker("models:/student@champion", resolve_uri=lambda uri: asked.append(uri) or folders["dot"])
    assert asked == ["models:/student@champion"] and model.architecture == "bert_dot"
    spec = {"name": "s", "path": "runs:/abc/model", "options": None, "layers": None, "num_layers": None}
    on = load_spec(spec, resolve_uri=lambda uri: folders["dot"], device=pick_device("cpu"))
    assert on.device.type == "cpu" and not on.training
    colbert = ColBERT.from_backbone(minilm_path, dim=16)
    assert load_ranker(colbert.save_pretrained(folders["dot"].parent / "colbert")).architecture == "colbert"


def test_pick_device_refuses_a_missing_gpu():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no GPU"):
            pick_device("cuda")
