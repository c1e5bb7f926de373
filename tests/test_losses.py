"""Tests for kd.losses: hand-computed values, validation messages, TinyBERT masking/layer map."""

from __future__ import annotations

import math

import pytest
import torch

from kd.losses import (
    LOSSES,
    EmbeddingAlignmentLoss,
    ListwiseKLLoss,
    MarginMSELoss,
    PointwiseMSELoss,
    RankNetLoss,
    SimplifiedTinyBERTLoss,
    StandardKDLoss,
    get_loss,
)


def t(values, **kw):
    return torch.tensor(values, dtype=torch.float32, **kw)


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    z = sum(e)
    return [v / z for v in e]


# ---------------------------------------------------------------- Margin-MSE


def test_margin_mse_hand_value():
    sp, sn, tp, tn = [2.0, 0.5, -1.0], [1.0, 1.5, -3.0], [4.0, 0.0, 1.0], [1.0, 2.0, 0.5]
    expected = sum(((a - b) - (c - d)) ** 2 for a, b, c, d in zip(sp, sn, tp, tn)) / 3
    # (1 - 3)² + (-1 - -2)² + (2 - 0.5)² = 4 + 1 + 2.25
    assert expected == pytest.approx(7.25 / 3)
    loss = MarginMSELoss()(t(sp), t(sn), t(tp), t(tn))
    assert loss.item() == pytest.approx(expected)


def test_margin_mse_signed_margin():
    sp, sn, tp, tn = t([2.0, 0.5]), t([1.0, 1.5]), t([4.0, 0.0]), t([1.0, 2.0])
    loss = MarginMSELoss()
    base = loss(sp, sn, tp, tn)
    assert loss(sn, sp, tn, tp).item() == pytest.approx(base.item())  # swap both: unchanged
    assert loss(sn, sp, tp, tn).item() != pytest.approx(base.item())  # swap student only: changes
    # a student with the right |margin| but the wrong sign is penalised
    assert loss(t([0.0]), t([3.0]), t([3.0]), t([0.0])).item() == pytest.approx(36.0)


def test_margin_mse_large_teacher_scores_not_squashed():
    tp, tn = [18.0, 12.5, 15.0], [10.0, 14.0, 11.0]
    sp, sn = [0.3, -0.2, 0.9], [0.1, 0.4, -0.5]
    expected = sum(((a - b) - (c - d)) ** 2 for a, b, c, d in zip(sp, sn, tp, tn)) / 3
    assert MarginMSELoss()(t(sp), t(sn), t(tp), t(tn)).item() == pytest.approx(expected, rel=1e-6)
    assert expected > 10  # would be tiny if teacher scores were squashed into (0, 1)


def test_margin_mse_validation():
    loss = MarginMSELoss()
    with pytest.raises(ValueError, match=r"student_pos.*teacher_neg.*\(3,\).*\(2,\)"):
        loss(t([1.0, 2, 3]), t([1.0, 2, 3]), t([1.0, 2, 3]), t([1.0, 2]))
    with pytest.raises(TypeError, match=r"teacher_pos.*torch.int64"):
        loss(t([1.0]), t([1.0]), torch.tensor([1]), t([1.0]))
    with pytest.raises(TypeError, match=r"student_neg.*dtype"):
        loss(t([1.0]), torch.tensor([1.0], dtype=torch.float64), t([1.0]), t([1.0]))
    with pytest.raises(ValueError, match=r"student_pos.*empty"):
        loss(t([]), t([]), t([]), t([]))


# ---------------------------------------------------------------- RankNet


def test_ranknet_hand_value_and_ignores_teacher():
    sp, sn = [2.0, -1.0, 0.5], [0.0, 1.0, 0.5]
    expected = sum(math.log(1 + math.exp(-(a - b))) for a, b in zip(sp, sn)) / 3
    loss = RankNetLoss()
    assert loss(t(sp), t(sn)).item() == pytest.approx(expected)
    assert loss(t(sp), t(sn), teacher_pos=t([9.0, 9, 9]), teacher_neg=None).item() == pytest.approx(expected)


def test_ranknet_validation():
    with pytest.raises(ValueError, match=r"student_pos.*student_neg"):
        RankNetLoss()(t([1.0, 2.0]), t([1.0]))
    with pytest.raises(TypeError, match=r"student_pos.*torch.int64"):
        RankNetLoss()(torch.tensor([1, 2]), t([1.0, 2.0]))


# ---------------------------------------------------------------- pointwise MSE


def test_pointwise_mse_hand_value():
    s, tt = [[1.0, 2.0], [0.0, -1.0]], [[15.0, 2.5], [-3.0, 1.0]]
    expected = sum((a - b) ** 2 for ra, rb in zip(s, tt) for a, b in zip(ra, rb)) / 4
    assert PointwiseMSELoss()(t(s), t(tt)).item() == pytest.approx(expected)


def test_pointwise_mse_validation():
    with pytest.raises(ValueError, match=r"student_scores.*teacher_scores.*\(2,\).*\(2, 1\)"):
        PointwiseMSELoss()(t([1.0, 2.0]), t([[1.0], [2.0]]))  # no silent broadcasting
    with pytest.raises(TypeError, match=r"teacher_scores.*torch.bool"):
        PointwiseMSELoss()(t([1.0]), torch.tensor([True]))


# ---------------------------------------------------------------- listwise KL


def _kl_by_hand(s_rows, t_rows, T, masks=None):
    total = 0.0
    for i, (s, tt) in enumerate(zip(s_rows, t_rows)):
        keep = masks[i] if masks else [True] * len(s)
        s = [x / T for x, k in zip(s, keep) if k]
        tt = [x / T for x, k in zip(tt, keep) if k]
        ps, pt = _softmax(s), _softmax(tt)
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    return total / len(s_rows) * T * T


@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
def test_kl_hand_value(T):
    s, tt = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], [[3.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]
    loss = ListwiseKLLoss(temperature=T)(t(s), t(tt))
    assert loss.item() == pytest.approx(_kl_by_hand(s, tt, T), rel=1e-5)


def test_kl_mask_excludes_candidates():
    s, tt = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], [[3.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]
    masks = [[True, True, False], [True, True, True]]
    mask = torch.tensor(masks)
    loss = ListwiseKLLoss()(t(s), t(tt), mask=mask)
    assert loss.item() == pytest.approx(_kl_by_hand(s, tt, 1.0, masks), rel=1e-5)
    # values at masked positions don't matter
    s2, t2 = t(s), t(tt)
    s2[0, 2], t2[0, 2] = 100.0, -50.0
    assert ListwiseKLLoss()(s2, t2, mask=mask).item() == pytest.approx(loss.item(), rel=1e-6)
    # gradients stay finite with masking
    s3 = t(s).requires_grad_()
    ListwiseKLLoss()(s3, t(tt), mask=mask).backward()
    assert torch.isfinite(s3.grad).all() and s3.grad[0, 2] == 0


def test_kl_zero_when_equal():
    x = t([[1.0, 2.0, 3.0]])
    assert ListwiseKLLoss(temperature=3.0)(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_kl_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        ListwiseKLLoss(temperature=bad)


def test_kl_validation():
    loss = ListwiseKLLoss()
    with pytest.raises(ValueError, match=r"student_scores.*\[B, n\]"):
        loss(t([1.0, 2.0]), t([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"student_scores.*teacher_scores"):
        loss(t([[1.0, 2.0]]), t([[1.0, 2.0, 3.0]]))
    with pytest.raises(TypeError, match=r"mask.*bool"):
        loss(t([[1.0, 2.0]]), t([[1.0, 2.0]]), mask=torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match=r"mask.*shape"):
        loss(t([[1.0, 2.0]]), t([[1.0, 2.0]]), mask=torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"no valid candidate"):
        loss(t([[1.0, 2.0]]), t([[1.0, 2.0]]), mask=torch.tensor([[False, False]]))


# ---------------------------------------------------------------- standard KD


def _soft_hard_by_hand(zs, zt, y, T):
    soft, hard = 0.0, 0.0
    for s_row, t_row, label in zip(zs, zt, y):
        ps, pt = _softmax([x / T for x in s_row]), _softmax([x / T for x in t_row])
        soft += sum(-b * math.log(a) for a, b in zip(ps, pt))
        hard += -math.log(_softmax(s_row)[label])
    B, C = len(zs), len(zs[0])
    return soft / (B * C), hard / B


@pytest.mark.parametrize("alpha,T", [(0.5, 1.0), (0.3, 2.0), (1.0, 1.0), (0.0, 4.0)])
def test_standard_kd_hand_value(alpha, T):
    zs, zt, y = [[0.2, 1.0], [1.5, -0.5], [0.0, 0.0]], [[-1.0, 2.0], [3.0, 0.0], [0.5, 1.0]], [1, 0, 1]
    soft, hard = _soft_hard_by_hand(zs, zt, y, T)
    loss = StandardKDLoss(alpha=alpha, temperature=T)(t(zs), t(zt), torch.tensor(y))
    assert loss.item() == pytest.approx(alpha * soft + (1 - alpha) * hard, rel=1e-5)


def test_standard_kd_validation():
    zs, zt = t([[0.2, 1.0]]), t([[0.0, 1.0]])
    with pytest.raises(ValueError, match="alpha"):
        StandardKDLoss(alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        StandardKDLoss(temperature=0)
    with pytest.raises(TypeError, match=r"labels.*integer.*torch.float32"):
        StandardKDLoss()(zs, zt, t([1.0]))
    with pytest.raises(ValueError, match=r"labels.*shape"):
        StandardKDLoss()(zs, zt, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"student_logits.*teacher_logits"):
        StandardKDLoss()(zs, t([[0.0, 1.0, 2.0]]), torch.tensor([1]))
    with pytest.raises(TypeError, match=r"student_logits.*torch.int64"):
        StandardKDLoss()(torch.tensor([[0, 1]]), zt, torch.tensor([1]))


# ---------------------------------------------------------------- Simplified TinyBERT

B, H, L, DS, DT = 2, 2, 4, 3, 5


def _tinybert_inputs(M, N, seed=0, heads_t=H):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return dict(
        student_logits=r(B, 2),
        teacher_logits=r(B, 2),
        labels=torch.tensor([1, 0]),
        student_attentions=[r(B, H, L, L) for _ in range(M)],
        teacher_attentions=[r(B, heads_t, L, L) for _ in range(N)],
        student_hidden_states=[r(B, L, DS) for _ in range(M + 1)],
        teacher_hidden_states=[r(B, L, DT) for _ in range(N + 1)],
        attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
    )


def _masked_mse_by_hand(a, b, mask):
    total, count = 0.0, 0
    for bi in range(a.shape[0]):
        for h in range(a.shape[1]):
            for i in range(a.shape[2]):
                for j in range(a.shape[3]):
                    keep = mask[bi][i] == 1 and mask[bi][j] == 1
                    d = (a[bi, h, i, j].item() - b[bi, h, i, j].item()) if keep else 0.0
                    total += d * d
                    count += 1
    return total / count


def test_tinybert_hand_value_and_components():
    M, N = 2, 4
    loss_fn = SimplifiedTinyBERTLoss(M, N, DS, DT)
    x = _tinybert_inputs(M, N)
    total = loss_fn(**x)
    mask = x["attention_mask"].tolist()
    att = sum(
        _masked_mse_by_hand(x["student_attentions"][m - 1], x["teacher_attentions"][2 * m - 1], mask)
        for m in (1, 2)
    )
    W, bias = loss_fn.hidden_proj.weight.detach(), loss_fn.hidden_proj.bias.detach()
    hid = 0.0
    for m in (0, 1, 2):
        hs, ht = x["student_hidden_states"][m], x["teacher_hidden_states"][2 * m]
        proj = hs @ W.T + bias  # explicit W_h·h + b
        hid += ((proj - ht) ** 2).sum().item() / ht.numel()
    soft, hard = _soft_hard_by_hand(x["student_logits"].tolist(), x["teacher_logits"].tolist(), [1, 0], 1.0)
    c = loss_fn.last_components
    assert set(c) == {"att", "hid", "soft", "hard"} and all(isinstance(v, float) for v in c.values())
    assert c["att"] == pytest.approx(att, rel=1e-5)
    assert c["hid"] == pytest.approx(hid, rel=1e-5)
    assert c["soft"] == pytest.approx(soft, rel=1e-5)
    assert c["hard"] == pytest.approx(hard, rel=1e-5)
    assert total.item() == pytest.approx(att + hid + soft + hard, rel=1e-5)


def test_tinybert_padding_does_not_contribute():
    loss_fn = SimplifiedTinyBERTLoss(2, 4, DS, DT)
    x = _tinybert_inputs(2, 4)
    before = loss_fn(**x).item()
    for a in x["teacher_attentions"]:
        a[1, :, 2:, :] += 100.0  # padded query rows of example 1
        a[1, :, :, 2:] -= 100.0  # padded key columns of example 1
    assert loss_fn(**x).item() == pytest.approx(before, rel=1e-6)
    x["teacher_attentions"][1][1, 0, 0, 0] += 1.0  # a real entry of a mapped layer does matter
    assert loss_fn(**x).item() != pytest.approx(before, rel=1e-6)


def test_tinybert_layer_map_picks_every_kth_teacher_layer():
    M, N = 2, 6  # k = 3: student layer 1 -> teacher 3, 2 -> 6 (list indices 2 and 5)
    loss_fn = SimplifiedTinyBERTLoss(M, N, DS, DT)
    assert loss_fn.k == 3
    x = _tinybert_inputs(M, N)
    teacher = [a.clone() + 7.0 for a in x["teacher_attentions"]]  # unmapped layers differ
    teacher[2] = x["student_attentions"][0].clone()
    teacher[5] = x["student_attentions"][1].clone()
    x["teacher_attentions"] = teacher
    loss_fn(**x)
    assert loss_fn.last_components["att"] == pytest.approx(0.0, abs=1e-12)
    # hidden states: index m -> m*k (0, 3, 6); make exactly those equal to W_h·H_s
    with torch.no_grad():
        x["teacher_hidden_states"] = [h + 7.0 for h in x["teacher_hidden_states"]]
        for m in range(M + 1):
            x["teacher_hidden_states"][m * 3] = loss_fn.hidden_proj(x["student_hidden_states"][m])
    loss_fn(**x)
    assert loss_fn.last_components["hid"] == pytest.approx(0.0, abs=1e-12)


def test_tinybert_hidden_projection_gets_gradients():
    loss_fn = SimplifiedTinyBERTLoss(2, 4, DS, DT)
    loss_fn(**_tinybert_inputs(2, 4)).backward()
    assert loss_fn.hidden_proj.weight.grad is not None
    assert loss_fn.hidden_proj.weight.grad.abs().sum() > 0
    assert loss_fn.hidden_proj.bias.grad.abs().sum() > 0


def test_tinybert_validation():
    with pytest.raises(ValueError, match=r"teacher_layers \(5\).*student_layers \(2\)"):
        SimplifiedTinyBERTLoss(2, 5, DS, DT)
    with pytest.raises(ValueError, match="temperature"):
        SimplifiedTinyBERTLoss(2, 4, DS, DT, temperature=-1)
    loss_fn = SimplifiedTinyBERTLoss(2, 4, DS, DT)
    with pytest.raises(ValueError, match=r"head counts.*student_attentions\[0\].*2 heads.*teacher_attentions\[1\].*3"):
        loss_fn(**_tinybert_inputs(2, 4, heads_t=3))
    x = _tinybert_inputs(2, 4)
    x["teacher_attentions"] = x["teacher_attentions"][:3]
    with pytest.raises(ValueError, match=r"teacher_attentions must hold 4 tensors, got 3"):
        loss_fn(**x)
    x = _tinybert_inputs(2, 4)
    x["student_hidden_states"] = x["student_hidden_states"][:2]
    with pytest.raises(ValueError, match=r"student_hidden_states must hold 3 tensors, got 2"):
        loss_fn(**x)
    x = _tinybert_inputs(2, 4)
    x["attention_mask"] = torch.ones(B, L + 1)
    with pytest.raises(ValueError, match=r"attention_mask.*shape"):
        loss_fn(**x)
    x = _tinybert_inputs(2, 4)
    x["student_hidden_states"][1] = torch.randn(B, L, DS + 1)
    with pytest.raises(ValueError, match=r"student_hidden_states\[1\].*student_hidden"):
        loss_fn(**x)
    x = _tinybert_inputs(2, 4)
    x["student_attentions"][0] = x["student_attentions"][0].long()
    with pytest.raises(TypeError, match=r"student_attentions\[0\].*torch.int64"):
        loss_fn(**x)


# ---------------------------------------------------------------- embedding alignment


def test_embedding_alignment_hand_value():
    fs, ft = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], [[0.0, 2.0, 1.0], [0.5, 1.0, 1.0]]
    B_, d = 2, 3
    expected = sum(sum((a - b) ** 2 for a, b in zip(rs, rt)) for rs, rt in zip(fs, ft)) / (B_ * d)
    assert expected == pytest.approx(10.0 / 6)
    assert EmbeddingAlignmentLoss()(t(fs), t(ft)).item() == pytest.approx(expected)


def test_embedding_alignment_validation():
    with pytest.raises(ValueError, match=r"student_emb.*teacher_emb.*\(2, 3\).*\(2, 4\)"):
        EmbeddingAlignmentLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"student_emb.*\[B, d\]"):
        EmbeddingAlignmentLoss()(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"student_emb.*empty"):
        EmbeddingAlignmentLoss()(torch.zeros(0, 3), torch.zeros(0, 3))


# ---------------------------------------------------------------- registry and common contract


def test_registry_names_and_attributes():
    assert set(LOSSES) == {
        "margin_mse", "mse", "kl", "ranknet", "standard_kd", "simplified_tinybert", "embedding_alignment",
    }
    kinds = {"pairwise", "pointwise", "listwise", "logits", "tinybert", "embedding"}
    for name, cls in LOSSES.items():
        assert cls.name == name
        assert cls.kind in kinds
        assert isinstance(cls.requires_teacher, bool)
        assert issubclass(cls, torch.nn.Module)
        assert cls.__doc__ and "L" in cls.__doc__
    assert LOSSES["ranknet"].requires_teacher is False
    assert isinstance(get_loss("kl", temperature=2.0), ListwiseKLLoss)
    assert get_loss("standard_kd", alpha=0.3).alpha == 0.3


def test_get_loss_unknown_name():
    with pytest.raises(ValueError, match=r"'margin-mse'.*known losses:.*margin_mse"):
        get_loss("margin-mse")


def _student_call(name):
    """(loss module, student tensors requiring grad, call kwargs) for every registered loss."""
    g = torch.Generator().manual_seed(1)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    if name in ("margin_mse", "ranknet"):
        sp, sn = r(4).requires_grad_(), r(4).requires_grad_()
        kw = dict(student_pos=sp, student_neg=sn, teacher_pos=r(4) * 10, teacher_neg=r(4) * 10)
        return get_loss(name), [sp, sn], kw
    if name in ("mse", "kl"):
        s = r(3, 5).requires_grad_()
        return get_loss(name), [s], dict(student_scores=s, teacher_scores=r(3, 5))
    if name == "standard_kd":
        s = r(3, 2).requires_grad_()
        return get_loss(name), [s], dict(student_logits=s, teacher_logits=r(3, 2), labels=torch.tensor([0, 1, 1]))
    if name == "simplified_tinybert":
        kw = _tinybert_inputs(2, 4, seed=3)
        students = [kw["student_logits"], *kw["student_attentions"], *kw["student_hidden_states"]]
        for x in students:
            x.requires_grad_()
        return get_loss(name, student_layers=2, teacher_layers=4, student_hidden=DS, teacher_hidden=DT), students, kw
    if name == "embedding_alignment":
        s = r(3, 8).requires_grad_()
        return get_loss(name), [s], dict(student_emb=s, teacher_emb=r(3, 8))
    raise AssertionError(f"no test inputs for {name}")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_scalar_output_backpropagates_to_student(name):
    loss_fn, students, kw = _student_call(name)
    out = loss_fn(**kw)
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    for x in students:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
