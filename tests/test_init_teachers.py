"""Student initialisation (layer subsets, other model + projection) and teachers (cross, bi, ensemble)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kd.init import layer_subset_student, other_model_student, resolve_layers, select_layers, subset_encoder_layers
from kd.init import truncate_layers
from kd.models import BertCat, BertDot, Ranker, TinyBertCat
from kd.models import backbone as bb
from kd.teachers import TeacherEnsemble, load_bi_encoder_teacher, load_cross_encoder_teacher


@pytest.mark.parametrize(
    "scheme,n,total,expected",
    [
        ("top-bottom", 4, 12, [0, 1, 10, 11]),  # the seed-003 paper's schemes on a 12-layer teacher
        ("uniform", 4, 12, [1, 4, 7, 10]),
        ("bottom", 4, 12, [0, 1, 2, 3]),
        ("middle", 4, 12, [4, 5, 6, 7]),
        ("top", 4, 12, [8, 9, 10, 11]),
        ("top-bottom", 2, 12, [0, 11]),
        ("top-bottom", 2, 6, [0, 5]),
        ("top-bottom", 3, 6, [0, 1, 5]),
        ("uniform", 2, 6, [1, 4]),
        ("uniform", 3, 6, [0, 2, 4]),
        ("bottom", 1, 6, [0]),
    ],
)
def test_named_schemes(scheme, n, total, expected):
    assert select_layers(scheme, n, total) == expected


def test_scheme_and_index_errors():
    with pytest.raises(ValueError, match="unknown layer scheme 'topbottom'"):
        select_layers("topbottom", 2, 6)
    with pytest.raises(ValueError, match=r"in \[1, 6\], got 7"):
        select_layers("bottom", 7, 6)
    with pytest.raises(ValueError, match=r"\[6\] out of range for a 6-layer model"):
        resolve_layers([0, 6], 6)
    with pytest.raises(ValueError, match="strictly increasing"):
        resolve_layers([5, 0], 6)
    with pytest.raises(ValueError, match="needs a number of layers"):
        resolve_layers("uniform", 6)


def _layer_state(encoder, i):
    return bb.layer_list(encoder)[i].state_dict()


def test_layer_subset_keeps_exactly_those_layers_in_order(minilm_path, tmp_path):
    teacher = BertDot.from_backbone(minilm_path)
    student = layer_subset_student(teacher, [0, 5])
    assert bb.num_layers(student.encoder) == 2 and student.encoder.config.num_hidden_layers == 2
    for new_i, old_i in enumerate([0, 5]):
        new, old = _layer_state(student.encoder, new_i), _layer_state(teacher.encoder, old_i)
        assert new.keys() == old.keys()
        assert all(torch.equal(new[k], old[k]) for k in new), f"student layer {new_i} != teacher layer {old_i}"
    # embeddings copied too; the teacher is untouched and shares no storage with the student
    assert torch.equal(student.encoder.embeddings.word_embeddings.weight, teacher.encoder.embeddings.word_embeddings.weight)
    assert bb.num_layers(teacher.encoder) == 6
    assert student.encoder.embeddings.word_embeddings.weight.data_ptr() != teacher.encoder.embeddings.word_embeddings.weight.data_ptr()
    # the smaller model saves and loads as a 2-layer model
    loaded = Ranker.from_pretrained(student.save_pretrained(tmp_path / "s"))
    assert bb.num_layers(loaded.encoder) == 2
    q = ["0-dimensional biomaterials show inductive properties."]
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode_queries(q), student.eval().encode_queries(q))


def test_subset_by_scheme_truncate_and_bare_encoder(minilm_path):
    teacher = BertDot.from_backbone(minilm_path)
    tb = layer_subset_student(teacher, "top-bottom", 2)
    assert torch.equal(_layer_state(tb.encoder, 1)["output.dense.weight"], _layer_state(teacher.encoder, 5)["output.dense.weight"])
    short = truncate_layers(teacher, 3)
    for i in range(3):
        assert torch.equal(_layer_state(short.encoder, i)["output.dense.weight"], _layer_state(teacher.encoder, i)["output.dense.weight"])
    enc = subset_encoder_layers(teacher.encoder, [1, 3])
    assert bb.num_layers(enc) == 2 and bb.num_layers(teacher.encoder) == 6


def test_subset_student_of_a_cross_encoder_keeps_its_head(minilm_path):
    teacher = TinyBertCat.from_backbone(minilm_path)
    student = layer_subset_student(teacher, "uniform", 3)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    out = student.forward_kd(**student.tokenize(["q"], ["a passage"]))
    assert len(out.attentions) == 3 and len(out.hidden_states) == 4


def test_other_model_student_projects_to_teacher_width(minilm_path):
    wide = other_model_student(minilm_path, teacher_dim=768)
    assert wide.projection is not None and wide.projection.in_features == 384 and wide.projection.out_features == 768
    with torch.no_grad():
        assert wide.encode_queries(["a query"]).shape == (1, 768)
    same = other_model_student(minilm_path, teacher_dim=384)
    assert same.projection is None and same.options["pooling"] == "mean"


# ------------------------------------------------------------------------------------------------------ teachers
@pytest.fixture(scope="module")
def pairs(sample_rows):
    rows = sample_rows[:4]
    return [r["query"] for r in rows], [r["passage"] for r in rows]


@pytest.mark.parametrize("num_labels", [1, 2])
def test_hf_sequence_classification_teacher(minilm_path, tmp_path, pairs, num_labels):
    torch.manual_seed(0)
    hf = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=num_labels).eval()
    tok = AutoTokenizer.from_pretrained(minilm_path)
    hf.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    teacher = load_cross_encoder_teacher(tmp_path / "hf")
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        z = hf(**tok(*pairs, padding=True, truncation="longest_first", max_length=512, return_tensors="pt")).logits
    expected = z[:, 0] if num_labels == 1 else z[:, 1] - z[:, 0]
    torch.testing.assert_close(teacher.predict(*pairs), expected, atol=1e-5, rtol=1e-5)
    # and it round-trips through our own folder format
    again = load_cross_encoder_teacher(teacher.save_pretrained(tmp_path / "kd"))
    torch.testing.assert_close(again.predict(*pairs), expected, atol=1e-5, rtol=1e-5)


def test_kd_folder_teachers_and_ensemble_mean(minilm_path, tmp_path, pairs):
    torch.manual_seed(1)
    a = BertCat.from_backbone(minilm_path).save_pretrained(tmp_path / "a")
    torch.manual_seed(2)
    b = BertCat.from_backbone(minilm_path).save_pretrained(tmp_path / "b")
    members = [load_cross_encoder_teacher(a), load_cross_encoder_teacher(b)]
    ens = TeacherEnsemble(members, names=["a", "b"])
    mean, each = ens.predict(*pairs, batch_size=3), ens.predict_members(*pairs, batch_size=3)
    assert each.shape == (2, len(pairs[0]))
    torch.testing.assert_close(each[0], members[0].predict(*pairs))
    torch.testing.assert_close(each[1], members[1].predict(*pairs))
    assert torch.equal(mean, ((each[0].double() + each[1].double()) / 2).float())
    assert not torch.equal(each[0], each[1])
    with torch.no_grad():
        torch.testing.assert_close(ens.score(*pairs), mean, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="distinct name"):
        TeacherEnsemble(members, names=["x", "x"])
    with pytest.raises(ValueError, match="at least one member"):
        TeacherEnsemble([])


def test_bi_encoder_teacher_and_role_checks(minilm_path, tmp_path, pairs):
    bi = load_bi_encoder_teacher(minilm_path)
    assert bi.options["pooling"] == "mean" and not any(p.requires_grad for p in bi.parameters())
    folder = bi.save_pretrained(tmp_path / "bi")
    with pytest.raises(ValueError, match="dual encoder, not a cross-encoder"):
        load_cross_encoder_teacher(folder)
    cat = BertCat.from_backbone(minilm_path).save_pretrained(tmp_path / "cat")
    with pytest.raises(ValueError, match="not a bi-encoder"):
        load_bi_encoder_teacher(cat)
    torch.testing.assert_close(load_bi_encoder_teacher(folder).predict(*pairs), bi.predict(*pairs))
